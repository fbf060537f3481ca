"""Legion wire format and crypto: the packet captured from a real uWSGI, round trips for every
cipher, each rejection of the receive pipeline (uwsgi-spec §7.3-§7.5) and fuzzing."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from nsattach.legion.ciphers import CIPHERS, lookup_cipher
from nsattach.legion.crypto import LegionCipher
from nsattach.legion.wire import NO_UUID, Announcement, PacketError, decode, encode, encode_body, parse_items

# uwsgi-spec §7.4: `legion = test 127.0.0.1:4000 10 aes-128-cbc:secret`, `legion-scroll = test hello scroll`
CAPTURED = bytes.fromhex("""
6dd90000479a23acddcfbdb6b4151b0030dd1e23a562a43b70cea6a53831ccf113ee94d7908366aaed5fd6727250fe13d3bf
e903c09a6b9ffbdae7af44d406ef618ab6eae5e503eae6719891c0d6aee1a2033e6caae59c117c631b4619962c618cdeb5
42d217598ed5e5e4efd72f4e79d548fe1016de191b1831b7b1f751c7732d96a8facd8923357a37ca9bf59e1a1c1a6f62bc
adfa0f9e5c0c71dbf8aa32655c4a368aaf4b792c885ce30a4a3177d247d175aaeb613251df788b63d3bae7091a7863b290
ddc8840006a92cffdad936fd62a50f65d8fde69c068dbc394494c174376673""".replace("\n", ""))

UUID = b"825652c5-2cc8-4d19-92f5-f488b2a4d1ab"


def aes() -> LegionCipher:
    return LegionCipher(lookup_cipher("aes-128-cbc"), "secret", None)


def sample(**kw) -> Announcement:
    fields = dict(legion="test", valor=10, unix=1795706635, lord=0, name="vm", pid=15043, uuid=UUID,
                  checksum=0, lord_valor=0, lord_uuid=NO_UUID, scroll=None, dead=False)
    fields.update(kw)
    return Announcement(**fields)


def item(key: bytes, value: bytes) -> bytes:
    return struct.pack("<H", len(key)) + key + struct.pack("<H", len(value)) + value


def packet(body: bytes, cipher: LegionCipher | None = None, *, pktsize: int | None = None, mod1: int = 109) -> bytes:
    cipher = cipher or aes()
    size = len(body) if pktsize is None else pktsize
    return struct.pack("<BHB", mod1, size, 0) + cipher.encrypt(body)


def base_items(**overrides: bytes) -> bytes:
    fields = {b"legion": b"test", b"valor": b"10", b"unix": b"1795706635", b"lord": b"0", b"name": b"vm",
              b"pid": b"1", b"uuid": UUID, b"checksum": b"0", b"lord_valor": b"0", b"lord_uuid": NO_UUID}
    fields.update({k.encode(): v for k, v in overrides.items()})
    return b"".join(item(k, v) for k, v in fields.items() if v is not None)


# --- the captured packet ----------------------------------------------------------------

def test_captured_uwsgi_packet_decodes_to_the_listed_fields():
    ann = decode(CAPTURED, aes())
    assert ann == Announcement(legion="test", valor=10, unix=1795706635, lord=0, name="vm", pid=15043,
                               uuid=UUID, checksum=0, lord_valor=0, lord_uuid=b"\0" * 36,
                               scroll=b"hello scroll", dead=False)


def test_encoding_reproduces_the_captured_packet_byte_for_byte():
    assert encode(sample(scroll=b"hello scroll"), aes()) == CAPTURED


def test_captured_key_and_iv_derivation():
    c = aes()
    assert c.key == b"secret" + b"\0" * 10
    assert c.iv == b"0" * 16
    body = c.decrypt(CAPTURED[4:])
    assert len(body) == 217 == struct.unpack_from("<H", CAPTURED, 1)[0]


# --- crypto ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(spec.name for spec in CIPHERS.values())))
def test_round_trip_every_cipher(name):
    spec = lookup_cipher(name)
    cipher = LegionCipher(spec, "a-secret", "an-iv")
    ann = sample(scroll="scroll ✓".encode(), checksum=2389, lord_valor=10, lord_uuid=UUID, lord=1795706700)
    data = encode(ann, cipher)
    assert decode(data, cipher) == ann
    assert decode(data, LegionCipher(spec, "a-secret", "an-iv")) == ann     # fresh context, static IV
    assert encode(ann, cipher) == data                                      # deterministic


def test_stream_modes_are_not_padded_and_block_modes_are():
    body = encode_body(sample())
    assert len(LegionCipher(lookup_cipher("aes-128-cfb"), "k", None).encrypt(body)) == len(body)
    assert len(LegionCipher(lookup_cipher("bf-ofb"), "k", None).encrypt(body)) == len(body)
    padded = LegionCipher(lookup_cipher("aes-128-cbc"), "k", None).encrypt(body)
    assert len(padded) == (len(body) // 16 + 1) * 16
    assert len(LegionCipher(lookup_cipher("bf-cbc"), "k", None).encrypt(body)) == (len(body) // 8 + 1) * 8


def test_key_and_iv_are_truncated_or_padded_like_uwsgi():
    c = LegionCipher(lookup_cipher("aes-128-cbc"), "x" * 40, "abc")
    assert c.key == b"x" * 16 and c.iv == b"abc" + b"0" * 13
    c = LegionCipher(lookup_cipher("bf-cbc"), "s3", "0123456789")
    assert c.key == b"s3" + b"\0" * 14 and c.iv == b"01234567"
    c = LegionCipher(lookup_cipher("aes-256-ecb"), "k", "ignored")
    assert len(c.key) == 32 and c.iv == b""


def test_same_plaintext_gives_same_ciphertext_static_iv():
    c = aes()
    assert c.encrypt(b"hello") == c.encrypt(b"hello") == aes().encrypt(b"hello")


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="no openssl binary to compare with")
@pytest.mark.parametrize("name", ["aes-128-cbc", "aes-256-cbc", "aes-192-ecb", "aes-128-cfb", "aes-256-ofb",
                                  "camellia-128-cbc", "camellia-256-cfb", "des-ede3-cbc"])
def test_matches_openssl_enc(name):
    """OpenSSL's own `enc` (the EVP layer uWSGI uses) gives the same bytes for the same key/IV."""
    cipher = LegionCipher(lookup_cipher(name), "secret", "my-iv")
    plaintext = encode_body(sample(scroll=b"openssl"))
    args = [OPENSSL, "enc", f"-{name}", "-K", cipher.key.hex()]
    if cipher.iv:
        args += ["-iv", cipher.iv.hex()]
    result = subprocess.run(args, input=plaintext, capture_output=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"openssl cannot do {name}: {result.stderr.decode(errors='replace').strip()}")
    assert cipher.encrypt(plaintext) == result.stdout


def test_decrypt_rejects_bad_lengths_and_padding():
    c = aes()
    with pytest.raises(ValueError):
        c.decrypt(b"")
    with pytest.raises(ValueError):
        c.decrypt(b"x" * 15)
    with pytest.raises(ValueError):
        LegionCipher(lookup_cipher("aes-128-cbc"), "wrong", None).decrypt(c.encrypt(b"hello world"))


def test_a_wrong_key_that_happens_to_unpad_is_still_rejected():
    """About 1 wrong key in 256 yields valid-looking padding (there is no MAC); the length
    check and the item parser catch those, as in uWSGI."""
    rejected = 0
    for i in range(300):
        try:
            decode(CAPTURED, LegionCipher(lookup_cipher("aes-128-cbc"), f"wrong{i}", None))
        except PacketError:
            rejected += 1
    assert rejected == 300


# --- rejections (§7.5 steps 1-5 and field validation) ------------------------------------------

@pytest.mark.parametrize("data, fragment", [
    (b"", "invalid packet size: 0"),
    (b"m\x01\x00", "invalid packet size: 3"),
    (b"\x6e" + CAPTURED[1:], "invalid modifier1"),
    (CAPTURED[:-1], "EVP_DecryptFinal_ex"),
    (CAPTURED[:4], "EVP_DecryptFinal_ex"),
    (CAPTURED[:1] + b"\xda" + CAPTURED[2:], "invalid packet size (header says 218, decrypted 217)"),
    (b"m\0\0\0" + b"\0" * 65496, "more than 65499"),
])
def test_header_and_decrypt_rejections(data, fragment):
    with pytest.raises(PacketError) as info:
        decode(data, aes())
    assert fragment in info.value.reason


def test_wrong_secret_is_rejected():
    with pytest.raises(PacketError, match="EVP_DecryptFinal_ex"):
        decode(CAPTURED, LegionCipher(lookup_cipher("aes-128-cbc"), "wrong", None))


def test_modifier2_is_not_checked():
    assert decode(CAPTURED[:3] + b"\x07" + CAPTURED[4:], aes()).name == "vm"


@pytest.mark.parametrize("body, fragment", [
    (base_items() + b"\x00\x00" + b"\x01\x00x", "empty key"),
    (base_items() + b"\x05\x00abc", "key runs past the end"),
    (base_items() + b"\x01\x00k", "missing value length"),
    (base_items() + b"\x01\x00k\x01", "missing value length"),
    (base_items() + b"\x01\x00k\x05\x00abc", "value runs past the end"),
    (base_items() + b"\x01\x00", "truncated item"),          # the ">2 bytes left" quirk
    (base_items() + b"\x01", "truncated item"),
])
def test_item_parsing_rejections(body, fragment):
    with pytest.raises(PacketError) as info:
        decode(packet(body), aes())
    assert fragment in info.value.reason


def test_quirk_needs_more_than_two_bytes_even_for_a_complete_length():
    # uWSGI's parser refuses to read a key length when exactly two bytes are left
    with pytest.raises(PacketError):
        parse_items(b"\x01\x00")
    assert parse_items(b"\x01\x00k\x00\x00") == [(b"k", b"")]
    assert parse_items(b"") == []


@pytest.mark.parametrize("overrides, fragment", [
    ({"valor": b"-5"}, "negative valor"),
    ({"valor": b"1x"}, "valor is not a decimal number"),
    ({"valor": b""}, "valor is not a decimal number"),
    ({"unix": b" 12"}, "unix is not a decimal number"),
    ({"pid": b"+3"}, "pid is not a decimal number"),
    ({"checksum": b"99999999999999999999"}, "does not fit in 64 bits"),
    ({"name": b""}, "empty node name"),
    ({"name": None}, "empty node name"),
])
def test_field_rejections(overrides, fragment):
    with pytest.raises(PacketError) as info:
        decode(packet(base_items(**overrides)), aes())
    assert fragment in info.value.reason


def test_field_quirks_kept_from_uwsgi():
    body = base_items(uuid=b"short", lord_uuid=b"x" * 37) + item(b"unknown", b"ignored") + item(b"pid", b"77") \
        + item(b"dead", b"") + item(b"scroll", b"")
    ann = decode(packet(body), aes())
    assert ann.uuid == NO_UUID and ann.lord_uuid == NO_UUID    # only exactly 36 bytes are taken
    assert ann.pid == 77                                       # last duplicate wins
    assert ann.dead is True                                    # presence is enough
    assert ann.scroll is None                                  # an empty scroll is no scroll


def test_unsigned_fields_keep_their_meaning_above_2_63():
    big = (1 << 64) - 5
    ann = sample(checksum=big, lord_valor=big)
    body = encode_body(ann)
    assert b"-5" in body                                      # printed like uWSGI's %lld
    assert decode(encode(ann, aes()), aes()) == ann


def test_missing_fields_default_like_uwsgi():
    ann = decode(packet(item(b"name", b"n")), aes())
    assert (ann.legion, ann.valor, ann.unix, ann.pid, ann.uuid) == ("", 0, 0, 0, NO_UUID)


def test_encode_rejects_bad_uuids_and_oversized_bodies():
    with pytest.raises(ValueError):
        encode(sample(uuid=b"x"), aes())
    with pytest.raises(ValueError):
        encode(sample(scroll=b"x" * 70000), aes())
    with pytest.raises(ValueError):
        encode(sample(scroll=b"x" * 65000, name="y" * 600), aes())


def test_non_utf8_names_round_trip_exactly():
    body = base_items(name=b"h\xffst", legion=b"l\xfe")
    ann = decode(packet(body), aes())
    assert encode_body(ann).startswith(item(b"legion", b"l\xfe") + item(b"valor", b"10"))
    assert item(b"name", b"h\xffst") in encode_body(ann)


# --- fuzzing --------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_datagrams_decode_or_raise_packet_error(data):
    try:
        assert isinstance(decode(data, aes()), Announcement)
    except PacketError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["aes-128-cbc", "aes-128-cfb", "bf-ofb", "aes-256-ecb"]))
def test_random_bodies_behind_a_valid_envelope(body, name):
    cipher = LegionCipher(lookup_cipher(name), "k", None)
    try:
        assert isinstance(decode(packet(body, cipher), cipher), Announcement)
    except PacketError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"legion", b"valor", b"name", b"uuid", b"dead", b"pid", b"x"]),
                          st.binary(max_size=40)), max_size=12))
def test_random_item_lists(items):
    body = b"".join(item(k, v) for k, v in items)
    try:
        assert isinstance(decode(packet(body), aes()), Announcement)
    except PacketError:
        pass


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
u64 = st.integers(0, (1 << 64) - 1)


@settings(max_examples=200, deadline=None)
@given(names, names, st.integers(0, (1 << 63) - 1), st.integers(0, 1 << 40), st.integers(0, 1 << 40),
       st.integers(0, 1 << 22), u64, u64, st.binary(min_size=36, max_size=36), st.one_of(st.none(), st.binary(min_size=1, max_size=100)),
       st.booleans())
def test_announcements_round_trip(legion, name, valor, unix, lord, pid, checksum, lord_valor, lord_uuid, scroll, dead):
    ann = Announcement(legion=legion, valor=valor, unix=unix, lord=lord, name=name, pid=pid, uuid=UUID,
                       checksum=checksum, lord_valor=lord_valor, lord_uuid=lord_uuid, scroll=scroll, dead=dead)
    assert decode(encode(ann, aes()), aes()) == ann
