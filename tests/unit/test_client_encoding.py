"""Request bodies: an apply patch is YAML, and every Unicode string must survive it."""

from __future__ import annotations

import json

import pytest
import yaml

from nhi.k8s.client import encode_body

pytestmark = pytest.mark.unit

APPLY = "application/apply-patch+yaml"

TEXTS = [
    "team-payments",
    "équipe paiements",
    "团队",
    "team 😀 rocket 🚀",  # outside the Basic Multilingual Plane: a surrogate pair in JSON
    "line\u2028separator and next\u0085line",  # line breaks to YAML 1.1
    "del\x7f and c1 \x9b controls",  # not printable to YAML
    'quotes " and \\ backslashes \\ud83d',  # text that looks like an escape
    "tab\tnewline\nnul\x00",
    "\ufeffbom and \U0010ffff last code point",
]


@pytest.mark.parametrize("text", TEXTS)
def test_an_apply_patch_is_ascii_yaml_that_reads_back_exactly(text: str) -> None:
    body = {"metadata": {"annotations": {"nhi.dev/owner": text}}, "n": [1, None, True]}
    encoded = encode_body(body, APPLY)
    assert encoded.isascii()
    # PyYAML reads YAML 1.1 and refuses what go-yaml (the API server's parser) refuses.
    assert yaml.safe_load(encoded) == body


def test_json_bodies_are_plain_json() -> None:
    body = {"status": {"message": "team 😀"}}
    assert encode_body(body, "application/merge-patch+json") == json.dumps(body)
