"""OAuth 1.0a signing (RFC 5849) and the value functions added for the new platforms."""

from __future__ import annotations

import base64

from router.delivery.signing import base_string_uri, oauth1_header, percent_encode
from router.expr import functions as fx
from router.expr.jinja import FILTERS
from router.expr.tree import compile_tree


def test_oauth1_matches_the_signature_x_documents() -> None:
    """X's "Creating a signature" example: the same inputs give its published signature."""
    header = oauth1_header(
        "POST", "https://api.twitter.com/1.1/statuses/update.json?include_entities=true",
        "xvz1evFS4wEEPTGEFPHBog", "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw",
        "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
        "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE",
        form={"status": "Hello Ladies + Gentlemen, a signed OAuth request!"},
        nonce="kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg", timestamp=1318622958)
    assert header.startswith("OAuth ")
    assert 'oauth_signature="hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D"' in header
    assert 'oauth_token="370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb"' in header


def test_oauth1_signature_changes_with_method_url_and_secret() -> None:
    base = dict(nonce="n", timestamp=1)
    one = oauth1_header("POST", "https://ads.example/12/c/abc", "ck", "cs", "t", "ts", **base)
    assert one != oauth1_header("GET", "https://ads.example/12/c/abc", "ck", "cs", "t", "ts", **base)
    assert one != oauth1_header("POST", "https://ads.example/12/c/abd", "ck", "cs", "t", "ts", **base)
    assert one != oauth1_header("POST", "https://ads.example/12/c/abc", "ck", "cX", "t", "ts", **base)


def test_oauth1_encoding_rules() -> None:
    assert percent_encode("a b+c~") == "a%20b%2Bc~"
    assert base_string_uri("HTTPS://Ads.Example:443/a?x=1") == "https://ads.example/a"
    assert base_string_uri("http://h:8080/p") == "http://h:8080/p"


def test_base64_filter_builds_basic_auth() -> None:
    assert fx.to_base64("user:secret") == base64.b64encode(b"user:secret").decode()
    assert fx.to_base64(None) is None
    assert FILTERS["base64"]("é:ü") == base64.b64encode("é:ü".encode()).decode()


def test_keep_empty_survives_empty_value_dropping_through_a_wrapper() -> None:
    payload = compile_tree({"user": {"ids": "{{ [] | keep_empty }}", "gone": "{{ [] }}"}},
                           (), lambda p, m: None).render({})
    wrapper = compile_tree({"elements": "{{ payloads }}"}, (), lambda p, m: None)
    assert wrapper.render({"payloads": [payload]}) == {"elements": [{"user": {"ids": []}}]}
    assert fx.keep_empty([{"a": None}, {"b": 1}]) == [{"b": 1}]


def test_email_forms_of_google_and_reddit() -> None:
    assert fx.norm_email_gmail_canonical("Cloudy.SanFrancisco+shopping@gmail.com") == \
        "cloudysanfrancisco@gmail.com"
    assert fx.norm_email_gmail_canonical("user.name+NYC@Example.com") == "user.name+nyc@example.com"
    assert fx.norm_email_gmail_canonical("a.b+c@googlemail.com") == "ab@googlemail.com"
    assert fx.norm_email_unaliased(" Jane.Doe+shop@Example.com ") == "janedoe@example.com"
    assert fx.norm_email_unaliased("o'brien@example.com") == "o'brien@example.com"


def test_regex_group_reads_both_google_tag_session_formats() -> None:
    pattern = "^GS[0-9][.][0-9]+[.]s?([0-9]+)"
    assert fx.regex_group("GS1.1.1732100000.3.1.1732100400.0.0.0", pattern) == "1732100000"
    assert fx.regex_group("GS2.1.s1732100000$o3$g1$t1732100400$j60$l0$h0", pattern) == "1732100000"
    assert fx.regex_group("GA1.1.123", pattern) is None
    assert fx.regex_group(None, pattern) is None
    assert fx.regex_group("iPad; CPU", "iPad|Tablet") == "iPad"
