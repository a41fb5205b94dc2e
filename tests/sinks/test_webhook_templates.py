# ruff: noqa: E501  (golden cases: one per line)
"""Webhook templates: handlebars.js compatibility, strict mode, the sandbox and the limits.

The expected outputs of GOLDEN were produced by handlebars.js 4.7.10, compiled with
``{strict: true, knownHelpersOnly: true}`` and a ``json`` helper (``JSON.stringify``); the
templates of STRICT_ERRORS throw there too.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from ocstream.sinks.templates import (
    HELPERS,
    TemplateRenderError,
    TemplateSyntaxError,
    compile_template,
    render_template,
)

NOTE: dict[str, Any] = {
    "id": "j1:received:0",
    "type": "xcm.received",
    "subscriptionId": "s1",
    "legs": [
        {
            "from": "urn:ocn:polkadot:1000",
            "to": "urn:ocn:polkadot:2032",
            "type": "hrmp",
            "relay": "urn:ocn:polkadot:0",
        }
    ],
    "origin": {
        "chainId": "urn:ocn:polkadot:1000",
        "blockNumber": "4833171",
        "outcome": "Success",
        "error": None,
    },
    "destination": {
        "chainId": "urn:ocn:polkadot:2032",
        "blockNumber": "3787659",
        "outcome": "Fail",
        "error": "UntrustedReserveLocation",
        "event": {
            "section": "XcmpQueue",
            "method": "Fail",
            "data": {"weight": {"ref_time": 800000000, "proof_size": 0}},
        },
    },
    "waypoint": {"chainId": "urn:ocn:polkadot:2032", "legIndex": 0},
    "sender": {"signer": {"id": "14Dqgd", "publicKey": "0x8e7f"}, "extraSigners": []},
}

GOLDEN = [
    (
        "{{type}} {{origin.chainId}} -> {{destination.chainId}}",
        NOTE,
        "xcm.received urn:ocn:polkadot:1000 -> urn:ocn:polkadot:2032",
    ),
    (
        '{"text": "{{type}} from {{origin.chainId}}", "outcome": "{{destination.outcome}}"}',
        NOTE,
        '{"text": "xcm.received from urn:ocn:polkadot:1000", "outcome": "Fail"}',
    ),
    ("{{{json destination.event.data}}}", NOTE, '{"weight":{"ref_time":800000000,"proof_size":0}}'),
    (
        "{{json legs}}",
        NOTE,
        "[{&quot;from&quot;:&quot;urn:ocn:polkadot:1000&quot;,&quot;to&quot;:&quot;urn:ocn:polkadot:2032&quot;,&quot;type&quot;:&quot;hrmp&quot;,&quot;relay&quot;:&quot;urn:ocn:polkadot:0&quot;}]",
    ),
    (
        "{{#each legs}}{{@index}}:{{from}}->{{to}} ({{type}}){{#unless @last}}, {{/unless}}{{/each}}",
        NOTE,
        "0:urn:ocn:polkadot:1000->urn:ocn:polkadot:2032 (hrmp)",
    ),
    ("{{#if messageId}}topic {{messageId}}{{else}}no topic{{/if}}", NOTE, "no topic"),
    (
        "{{#if destination.error}}failed: {{destination.error}}{{/if}}",
        NOTE,
        "failed: UntrustedReserveLocation",
    ),
    ("{{#with sender.signer}}{{id}} ({{publicKey}}){{/with}}", NOTE, "14Dqgd (0x8e7f)"),
    (
        "{{#each sender.extraSigners}}{{id}}{{else}}no extra signers{{/each}}",
        NOTE,
        "no extra signers",
    ),
    (
        '{{lookup destination "outcome"}} {{lookup legs 0}} {{legs.length}} {{legs.[0].relay}}',
        NOTE,
        "Fail [object Object] 1 urn:ocn:polkadot:0",
    ),
    (
        "{{#each origin}}{{@key}}={{this}};{{/each}}",
        NOTE,
        "chainId=urn:ocn:polkadot:1000;blockNumber=4833171;outcome=Success;error=;",
    ),
    ("{{#each legs as |leg i|}}{{i}}{{leg.to}}{{/each}}", NOTE, "0urn:ocn:polkadot:2032"),
    ("{{#if origin.error}}a{{else if destination.error}}b{{else}}c{{/if}}", NOTE, "b"),
    (
        "{{#destination}}{{chainId}}{{/destination}}|{{^sender.extraSigners}}none{{/sender.extraSigners}}",
        NOTE,
        "urn:ocn:polkadot:2032|none",
    ),
    (
        "{{@root.type}} {{#each legs}}{{../type}} {{@root.id}}{{/each}}",
        NOTE,
        "xcm.received xcm.received j1:received:0",
    ),
    (
        "<b>{{destination.error}}</b> {{{destination.error}}} {{x}}",
        {"destination": {"error": "<&\"'`=>"}, "x": "a=b"},
        "<b>&lt;&amp;&quot;&#x27;&#x60;&#x3D;&gt;</b> <&\"'`=> a&#x3D;b",
    ),
    (
        "{{n}} {{f}} {{t}} {{z}} {{e}} {{big}} {{neg}}",
        {"n": None, "f": 1.5, "t": True, "z": 0, "e": 1e-07, "big": 1e21, "neg": -2.0},
        " 1.5 true 0 1e-7 1e+21 -2",
    ),
    (
        "{{list}} {{obj}}",
        {"list": [1, "a", None, [2, 3]], "obj": {"a": 1}},
        "1,a,,2,3 [object Object]",
    ),
    (
        "{{#if zero}}y{{else}}n{{/if}} {{#if zero includeZero=true}}y{{/if}} {{#if empty}}y{{else}}n{{/if}} {{#if obj}}y{{/if}}",
        {"zero": 0, "empty": [], "obj": {}},
        "n y n y",
    ),
    (
        "list:\n{{#each items}}\n  - {{this}}\n{{/each}}\nend\n",
        {"items": ["a", "b"]},
        "list:\n  - a\n  - b\nend\n",
    ),
    ("{{#if a}}\n  yes\n{{else}}\n  no\n{{/if}}\n", {"a": False}, "  no\n"),
    ("a {{~x~}} b {{! comment }} c {{!-- long }} comment --}}d", {"x": "X"}, "aXb  c d"),
    ("\\{{not}} {{x}}", {"x": 1}, "{{not}} 1"),
    ("{{[a b]}} {{x.[y.z]}}", {"a b": 1, "x": {"y.z": 2}}, "1 2"),
    (
        "{{#each a}}{{#each this}}{{@../index}}.{{@index}} {{/each}}{{/each}}",
        {"a": [[1, 2], [3]]},
        "0.0 0.1 1.0 ",
    ),
    ("{{#each a}}{{@first}}{{@last}} {{/each}}", {"a": {"x": 1, "y": 2}}, "truefalse falsetrue "),
]

STRICT_ERRORS = [
    ("{{missing}}", {}),
    ("{{a.b.c}}", {"a": {"b": None}}),
    ("{{#each items}}{{name}}{{/each}}", {"items": [{"nom": 1}]}),
    ("{{#missing}}x{{/missing}}", {}),
    ("{{../x}}", {"x": 1}),
]


@pytest.mark.parametrize(("source", "context", "expected"), GOLDEN)
def test_renders_as_handlebars_js(source: str, context: Any, expected: str) -> None:
    assert render_template(source, context) == expected


@pytest.mark.parametrize(("source", "context"), STRICT_ERRORS)
def test_strict_mode_raises_on_missing_properties(source: str, context: Any) -> None:
    with pytest.raises(TemplateRenderError, match="not defined"):
        render_template(source, context)


def test_the_error_names_the_path_and_the_position() -> None:
    with pytest.raises(TemplateRenderError) as info:
        render_template("ok\n  {{destination.nope}}", NOTE)
    assert '"nope" not defined in an object' in str(info.value)
    assert "destination.nope at 2:4" in str(info.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{foo x}}",  # an unknown helper
        "{{#foo x}}{{/foo}}",
        "{{> partial}}",
        "{{#> layout}}x{{/layout}}",
        "{{{{raw}}}}x{{{{/raw}}}}",
        "{{*decorator}}",
        "{{#if a}}x",  # never closed
        "{{#if a}}x{{/unless}}",
        "{{/if}}",
        "{{else}}",
        "{{#if}}x{{/if}}",  # if takes one argument
        "{{#if a b}}x{{/if}}",
        "{{lookup a}}",
        "{{json}}",
        "{{if a}}",  # a block helper used inline
        "{{#json a}}x{{/json}}",
        "{{x",
        "{{x}}}",
        "{{a.this}}",
        "{{(foo a)}}",
        "{{json (foo a)}}",
        "{{#if a}}x{{else}}y{{else}}z{{/if}}",
    ],
)
def test_syntax_outside_the_subset_is_refused_at_compile_time(source: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        compile_template(source)


def test_the_known_helpers() -> None:
    assert HELPERS == {"if", "unless", "each", "with", "lookup", "json"}


def test_no_attribute_access_and_no_code_execution() -> None:
    # pybars3 pastes this bracketed segment into generated Python and runs it; here it is a key.
    evil = "{{[') or __import__('os').getpid() or (']}}"
    with pytest.raises(TemplateRenderError, match="not defined"):
        render_template(evil, {})
    assert render_template(evil, {"') or __import__('os').getpid() or ('": "k"}) == "k"
    for path in ("x.__class__", "x.constructor", "x.__proto__", "x.keys", "s.upper"):
        with pytest.raises(TemplateRenderError):
            render_template("{{" + path + "}}", {"x": {}, "s": "abc"})
    assert render_template("{{lookup x '__class__'}}", {"x": {}}) == ""
    assert "os" not in sys.modules["ocstream.sinks.templates"].__dict__


def test_output_and_work_are_bounded() -> None:
    many = {"a": list(range(100))}
    big = "{{#each a}}{{#each ../a}}{{#each ../../a}}xxxxxxxxxx{{/each}}{{/each}}{{/each}}"
    with pytest.raises(TemplateRenderError, match="exceeds"):
        render_template(big, many, max_steps=10**7)
    silent = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{/each}}{{/each}}{{/each}}"
    with pytest.raises(TemplateRenderError, match="steps"):
        render_template(silent, many)
    assert render_template("{{#each a}}x{{/each}}", many, max_chars=100) == "x" * 100
    with pytest.raises(TemplateSyntaxError, match="nested deeper"):
        compile_template("{{#if a}}" * 65 + "{{/if}}" * 65)
    with pytest.raises(TemplateSyntaxError, match="nested deeper"):
        compile_template("{{json " + "(lookup " * 70 + "a 1" + " 1)" * 70 + "}}")


def test_templates_are_compiled_once() -> None:
    source = "{{type}} cached"
    assert compile_template(source) is compile_template(source)


def test_integers_stay_exact() -> None:
    # JavaScript would print 12345678901234567000; JSON numbers are exact here.
    assert render_template("{{n}}", {"n": 12345678901234567890}) == "12345678901234567890"
