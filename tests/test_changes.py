"""``--change`` instructions without an engine: what Docker 20.10 made of each of these
(checked on the engine when they were written; tests/test_docker_import.py compares
with a live one), and the config ``docker import`` writes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ocistore.errors import InvalidInput
from ocistore.spec.legacy import gojson
from ocistore.spec.legacy.changes import ChangeError, build_from_config, import_config
from ocistore.spec.legacy.v1 import CONTAINER_CONFIG

SH = ["/bin/sh", "-c"]


def config(*changes: str) -> dict[str, Any]:
    """The fields the changes set (Go's zero values left out)."""
    full = build_from_config(list(changes))
    return {k: v for k, v in full.items() if v not in (None, "", False)}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ((), {}),
        (("CMD echo hi",), {"Cmd": [*SH, "echo hi"]}),
        (('CMD ["a", "b"]',), {"Cmd": ["a", "b"]}),
        (("CMD",), {"Cmd": SH}),
        (("CMD []",), {"Cmd": []}),
        (("CMD ['a']",), {"Cmd": [*SH, "['a']"]}),
        (('CMD ["a",',), {"Cmd": [*SH, '["a",']}),
        (('CMD ["a"] x',), {"Cmd": ["a"]}),
        (("CMD $HOME",), {"Cmd": [*SH, "$HOME"]}),  # not substituted
        (("ENTRYPOINT e f",), {"Entrypoint": [*SH, "e f"]}),
        (("ENTRYPOINT []",), {}),
        (("CMD c", "ENTRYPOINT e"), {"Cmd": [*SH, "c"], "Entrypoint": [*SH, "e"]}),
        (("ENTRYPOINT e", "CMD c"), {"Cmd": [*SH, "c"], "Entrypoint": [*SH, "e"]}),
        (("CMD", "ENTRYPOINT e"), {"Entrypoint": [*SH, "e"]}),  # an empty CMD is no CMD
        (('ENV A=1 B="x y"',), {"Env": ["A=1", "B=x y"]}),
        (("ENV A a b  c",), {"Env": ["A=a b  c"]}),
        (("ENV A=1", "ENV B=2 A=3"), {"Env": ["A=3", "B=2"]}),
        (("ENV A=1 B=$A",), {"Env": ["A=1", "B="]}),  # the env before the instruction
        (("ENV A=1", "ENV C $A-${A}"), {"Env": ["A=1", "C=1-1"]}),
        (
            ('ENV C="a\\"b" D=\'s $A\' E=\\$A F=a\\ b',),
            {"Env": ['C=a"b', "D=s $A", "E=$A", "F=a b"]},
        ),
        (("ENV A=${B:-def} C=${A:+alt}",), {"Env": ["A=def", "C="]}),
        (("ENV E=", "ENV a=${E?}"), {"Env": ["E=", "a="]}),
        (
            ("ENV a=$1x b=$12 c=$@ d=$$ f=$ g=a$",),
            {"Env": ["a=x", "b=", "c=", "d=", "f=$", "g=a$"]},
        ),
        (("ENV é=1", "ENV b=$é"), {"Env": ["é=1", "b=1"]}),
        (("ENV ${K}x=1",), {"Env": ["x=1"]}),
        (("ENV A=1 \\", "B=2"), {"Env": ["A=1", "B=2"]}),
        (("# escape=`", "ENV A=1 `", "B=a`$x"), {"Env": ["A=1", "B=a$x"]}),
        (("# comment", "env x=1"), {"Env": ["x=1"]}),
        (('LABEL a=b "c d"="e f" g=h\\ i',), {"Labels": {"a": "b", "c d": "e f", "g": "h i"}}),
        (("LABEL a=1 b=2", "LABEL a=3"), {"Labels": {"a": "3", "b": "2"}}),
        (
            ("EXPOSE 80/tcp 443 53/udp 7000-7002 8000-8001/UDP 1.2.3.4:80:90 80/tcp/x",),
            {
                "ExposedPorts": {
                    p: {}
                    for p in [
                        *("80/tcp", "443/tcp", "53/udp", "7000/tcp", "7001/tcp", "7002/tcp"),
                        *("8000/udp", "8001/udp", "90/tcp"),
                    ]
                }
            },
        ),
        (
            ("EXPOSE $P", 'ENV P="1 2"', "EXPOSE $P"),
            {"Env": ["P=1 2"], "ExposedPorts": {"1/tcp": {}, "2/tcp": {}}},
        ),
        (("VOLUME /v /w", 'VOLUME ["/x"]'), {"Volumes": {"/v": {}, "/w": {}, "/x": {}}}),
        (("WORKDIR a", "WORKDIR ../b/./c/", "WORKDIR d"), {"WorkingDir": "/b/c/d"}),
        (("WORKDIR /a/../b/",), {"WorkingDir": "/a/../b/"}),  # an absolute path is kept
        (('WORKDIR "x y"',), {"WorkingDir": "/x y"}),
        (("USER a b",), {"User": "a b"}),
        (("USER $U", "ENV U=me", "USER $U"), {"Env": ["U=me"], "User": "me"}),
        (
            ("onbuild  ADD . /x", "ONBUILD RUN x  ", "ONBUILD BOGUS"),
            {"OnBuild": ["ADD . /x", "RUN x  ", "BOGUS"]},
        ),
        (
            (
                "HEALTHCHECK --interval=5s --timeout=1m30s --start-period=1.5s --retries=3 "
                'CMD ["a"]',
            ),
            {
                "Healthcheck": {
                    "Test": ["CMD", "a"],
                    "Interval": 5_000_000_000,
                    "Timeout": 90_000_000_000,
                    "StartPeriod": 1_500_000_000,
                    "Retries": 3,
                }
            },
        ),
        (("HEALTHCHECK CMD true",), {"Healthcheck": {"Test": ["CMD-SHELL", "true"]}}),
        (("HEALTHCHECK CMD true", "HEALTHCHECK NONE"), {"Healthcheck": {"Test": ["NONE"]}}),
    ],
)
def test_changes_make_the_config_docker_makes(
    changes: tuple[str, ...], expected: dict[str, Any]
) -> None:
    assert config(*changes) == expected


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (("RUN x",), 'change "RUN x": run is not a valid change command'),
        (("STOPSIGNAL 9",), 'change "STOPSIGNAL 9": stopsignal is not a valid change command'),
        # Every name is checked before anything is dispatched.
        (("ENV", "FROM x"), 'change "FROM x": from is not a valid change command'),
        (("ENV",), 'change "ENV": ENV requires at least one argument'),
        (("LABEL",), 'change "LABEL": LABEL requires at least one argument'),
        (("USER",), 'change "USER": USER requires exactly one argument'),
        (("VOLUME [ ]",), 'change "VOLUME [ ]": VOLUME requires at least one argument'),
        (('VOLUME ""',), 'change "VOLUME \\"\\"": VOLUME specified can not be an empty string'),
        (("EXPOSE abc",), 'change "EXPOSE abc": Invalid containerPort: abc'),
        (("EXPOSE 70000",), 'change "EXPOSE 70000": Invalid containerPort: 70000'),
        (("EXPOSE 80/sctpx",), 'change "EXPOSE 80/sctpx": Invalid proto: sctpx'),
        (("ONBUILD",), 'change "ONBUILD": ONBUILD requires at least one argument'),
        (
            ("ONBUILD MAINTAINER x",),
            'change "ONBUILD MAINTAINER x": MAINTAINER isn\'t allowed as an ONBUILD trigger',
        ),
        (
            ("HEALTHCHECK NONE x",),
            'change "HEALTHCHECK NONE x": HEALTHCHECK NONE takes no arguments',
        ),
        (("HEALTHCHECK CMD",), 'change "HEALTHCHECK CMD": Missing command after HEALTHCHECK CMD'),
        (
            ("HEALTHCHECK --start-interval=1s CMD x",),
            'change "HEALTHCHECK --start-interval=1s CMD x": Unknown flag: start-interval',
        ),
        (
            ("HEALTHCHECK --interval=0s CMD x",),
            'change "HEALTHCHECK --interval=0s CMD x": Interval "interval" cannot be less than 1ms',
        ),
        (
            ("HEALTHCHECK --retries=-1 CMD x",),
            'change "HEALTHCHECK --retries=-1 CMD x": --retries must be at least 1 (not -1)',
        ),
        (
            ("HEALTHCHECK --interval=1µs CMD x",),
            'change "HEALTHCHECK --interval=1µs CMD x": time: unknown unit "\\xc3\\x82\\xc2\\xb5s" '
            'in duration "1\\xc3\\x82\\xc2\\xb5s"',
        ),
        (
            ("ENV a=${B?}",),
            'change "ENV a=${B?}": failed to process "${B?}": B: is not allowed to be unset',
        ),
        (
            ("ENV E=", "ENV a=${E:?}"),
            'change "ENV a=${E:?}": failed to process "${E:?}": E: is not allowed to be empty',
        ),
        (
            ("ENV a=${B-x}",),
            'change "ENV a=${B-x}": failed to process "${B-x}": missing \':\' in substitution',
        ),
        (
            ("ENV a=${B:=x}",),
            'change "ENV a=${B:=x}": failed to process "${B:=x}": '
            "unsupported modifier (=) in substitution",
        ),
        (
            ("ENV a=${}",),
            'change "ENV a=${}": failed to process "${}": syntax error: bad substitution',
        ),
        (
            ("ENV a=${B",),
            'change "ENV a=${B": failed to process "${B": missing \':\' in substitution',
        ),
        (
            ("ENV a='x",),
            'change "ENV a=\'x": failed to process "\'x": '
            "unexpected end of statement while looking for matching single-quote",
        ),
        (("ENV a",), "changes: ENV must have two arguments"),
        (
            ('CMD ["a", 1]',),
            "changes: when using JSON array syntax, arrays must be comprised of strings only",
        ),
        (("# only",), "changes: file with no instructions"),
        (("",), "changes: file with no instructions"),
        (("# escape=x", "ENV a=1"), "changes: invalid escape token 'x' does not match ` or \\"),
    ],
)
def test_refused_changes_say_what_docker_says(changes: tuple[str, ...], message: str) -> None:
    with pytest.raises(ChangeError) as e:
        build_from_config(list(changes))
    assert str(e.value) == message
    assert isinstance(e.value, InvalidInput)  # one line for the user, exit 1


def test_import_config_is_docker_s_bytes() -> None:
    """Keys sorted at the top (image.Image's MarshalJSON), container.Config in Go's field
    order with its zero values, HTML-safe escapes, nanoseconds, no docker_version."""
    c = build_from_config(["ENV A=<&>", 'CMD ["sh"]', "LABEL é=ü"])
    created = gojson.GoTime.unix(1_800_000_000, 123_456_000)
    raw = import_config(
        c, "sha256:" + "a" * 64, comment="hé <x>", created=created, architecture="amd64"
    )
    empty = (
        '{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,'
        '"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,'
        '"Cmd":null,"Image":"","Volumes":null,"WorkingDir":"","Entrypoint":null,"OnBuild":null,'
        '"Labels":null}'
    )
    config_json = gojson.marshal(c, CONTAINER_CONFIG).decode()
    assert config_json == empty.replace(
        '"Env":null,"Cmd":null', '"Env":["A=\\u003c\\u0026\\u003e"],"Cmd":["sh"]'
    ).replace('"Labels":null', '"Labels":{"é":"ü"}')
    assert raw.decode() == (
        '{"architecture":"amd64","comment":"hé \\u003cx\\u003e",'
        f'"config":{config_json},"container_config":{empty},'
        '"created":"2027-01-15T08:00:00.123456Z",'
        '"history":[{"created":"2027-01-15T08:00:00.123456Z","comment":"hé \\u003cx\\u003e"}],'
        '"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:' + "a" * 64 + '"]}}'
    )
    assert "docker_version" not in json.loads(raw)
