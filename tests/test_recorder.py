"""probes.recorder: the secret masker and the per-run recorder."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from probes.canary import Token
from probes.recorder import MASK, Facts, Masker, Recorder

SECRET = 'pa"ss\\word'  # a quote and a backslash: the IMAP quoted form differs from the plain one
USER = "canary@example.com"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_masks_the_plain_secret() -> None:
    m = Masker(["hunter2"])
    assert m("PASS hunter2") == f"PASS {MASK}"
    assert m("hunter2hunter2") == MASK + MASK
    assert m("nothing here") == "nothing here"


def test_masks_base64() -> None:
    m = Masker(["hunter2"])
    assert m(f"C: {b64('hunter2')}") == f"C: {MASK}"


def test_masks_the_imap_quoted_form() -> None:
    m = Masker([SECRET])
    quoted = 'pa\\"ss\\\\word'
    line = f'a1 LOGIN "{USER}" "{quoted}"'
    assert m(line) == f'a1 LOGIN "{USER}" "{MASK}"'
    assert SECRET not in m(line)
    assert m(f"plain {SECRET}") == f"plain {MASK}"


@pytest.mark.parametrize("authzid", ["", USER])
def test_masks_the_sasl_plain_blob(authzid: str) -> None:
    m = Masker()
    m.add(SECRET, USER)
    blob = b64(f"{authzid}\0{USER}\0{SECRET}")
    assert m(f"AUTH PLAIN {blob}") == f"AUTH PLAIN {MASK}"
    assert m(blob) == MASK


def test_sasl_plain_blob_without_username_is_not_known() -> None:
    m = Masker(["hunter2"])  # no username given: only the secret's own forms
    blob = b64(f"\0{USER}\0hunter2")
    assert m(blob) == blob


def test_longest_first_when_one_secret_contains_another() -> None:
    for order in (["abc", "xxabcxx"], ["xxabcxx", "abc"]):
        m = Masker(order)
        assert m("xxabcxx") == MASK
        assert m("abc and xxabcxx") == f"{MASK} and {MASK}"
        assert "abc" not in m("1xxabcxx2")


def test_empty_secret_is_ignored() -> None:
    m = Masker([""])
    assert m("some text") == "some text"
    m.add("", USER)
    assert m("some text") == "some text"


def test_adding_twice_is_harmless() -> None:
    m = Masker(["hunter2"])
    m.add("hunter2")
    m.add("hunter2", USER)
    assert m("hunter2 " + b64("hunter2")) == f"{MASK} {MASK}"


def test_unicode_secret_base64_is_of_its_utf8() -> None:
    m = Masker(["pässwörd"])
    assert m(b64("pässwörd")) == MASK
    assert m("pässwörd") == MASK


# ---- Recorder -------------------------------------------------------------------------------------------


def fake_clock(*times: float) -> Callable[[], float]:
    it = iter(times)
    return lambda: next(it)


def test_few_and_many_secrets_mask_alike() -> None:
    """With at most FEW_FORMS forms a substring pre-test rules clean texts out; with more, the index
    alone decides. Both give the same text for the same secrets (longest first, overlaps, edges)."""
    import random

    from probes import recorder

    rng = random.Random(9)
    secrets = ["hunter2", "hunter2hunter", 'p@ss"w', "x" * 12, "ünïcode-pw"]
    filler = [f"filler-secret-{n:03d}" for n in range(200)]  # pushes the second masker past FEW_FORMS
    few, many = Masker(), Masker()
    for secret in secrets:
        few.add(secret, "user@example.test")
        many.add(secret, "user@example.test")
    for secret in filler:
        many.add(secret)
    assert few("") == "" and many("") == ""
    few(""), many("")  # built
    assert few._few is not None and many._few is None
    assert len(few._needles) <= recorder.FEW_FORMS < len(many._needles)
    forms = sorted(few._needles)
    for _ in range(2000):
        alphabet = ["a", " ", "hunter", "2", "x", '"', "LOGIN "]
        pieces = [rng.choice(alphabet) for _ in range(rng.randint(0, 8))]
        for _ in range(rng.randint(0, 3)):
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(forms))
        text = "".join(pieces)
        assert few(text) == many(text), text
        if not any(form in text for form in forms):
            assert few(text) is text  # a clean text comes back untouched
        else:
            assert not any(form in few(text) for form in ("hunter2", "ünïcode-pw"))


def test_phase_times_a_phase() -> None:
    rec = Recorder(clock=fake_clock(10.0, 10.5))
    with rec.phase("smtp_connect"):
        assert rec.facts.current_phase == "smtp_connect"
    assert rec.phases == {"smtp_connect": 0.5}
    assert rec.facts.current_phase is None


def test_phase_accumulates() -> None:
    rec = Recorder(clock=fake_clock(0.0, 1.0, 5.0, 5.25))
    with rec.phase("poll"):
        pass
    with rec.phase("poll"):
        pass
    assert rec.phases == {"poll": 1.25}


def test_phase_records_when_the_body_raises() -> None:
    rec = Recorder(clock=fake_clock(100.0, 102.0))
    with pytest.raises(RuntimeError, match="boom"), rec.phase("receive_login"):
        raise RuntimeError("boom")
    assert rec.phases == {"receive_login": 2.0}
    assert rec.facts.current_phase == "receive_login"  # the failed phase


def test_nested_phases_leave_the_failing_one() -> None:
    rec = Recorder(clock=fake_clock(0.0, 1.0, 3.0, 4.0))
    with rec.phase("outer"):
        pass
    with pytest.raises(KeyError), rec.phase("inner"):
        raise KeyError("x")
    assert rec.phases == {"outer": 1.0, "inner": 1.0}
    assert rec.facts.current_phase == "inner"


def test_phase_removes_a_stale_failed_phase_on_success() -> None:
    rec = Recorder(clock=fake_clock(0.0, 1.0, 2.0, 3.0))
    with pytest.raises(ValueError), rec.phase("first"):
        raise ValueError
    with rec.phase("second"):
        pass
    assert rec.facts.current_phase is None


def test_set_phase_overrides() -> None:
    rec = Recorder(clock=fake_clock(0.0, 9.0))
    with rec.phase("receive_wait"):
        pass
    rec.set_phase("receive_wait", 0.125)
    assert rec.phases == {"receive_wait": 0.125}


def test_debug_is_a_no_op_without_a_transcript() -> None:
    rec = Recorder(masker=Masker(["hunter2"]))
    assert rec.transcript is None
    assert rec.debugging is False
    rec.debug("C: smtp", "AUTH PLAIN hunter2")
    assert rec.transcript is None


def test_debug_records_masked_lines() -> None:
    rec = Recorder(masker=Masker(["hunter2"]), transcript=[])
    assert rec.debugging is True
    rec.debug("C: imap", 'a1 LOGIN "u" "hunter2"\r\n')
    rec.debug("S: imap", "a1 OK")
    assert rec.transcript == [f'C: imap a1 LOGIN "u" "{MASK}"', "S: imap a1 OK"]


def test_recorder_defaults_are_independent() -> None:
    a, b = Recorder(), Recorder()
    a.phases["x"] = 1.0
    a.facts.current_phase = "x"
    a.facts.swept.append(Token("p", 0, "n"))
    assert b.phases == {}
    assert b.facts == Facts()
    assert a.commands == 0


def test_masked_errors_hide_a_secret_a_server_echoed() -> None:
    from probes.errors import ProbeError

    rec = Recorder(masker=Masker(["hunter2"]))
    with pytest.raises(ProbeError) as err, rec.masked_errors():
        raise ProbeError("server said: bad password hunter2", reason="receive_auth", code=535)
    assert str(err.value) == "server said: bad password ********"
    assert (err.value.reason, err.value.code) == ("receive_auth", 535)
