"""The ciphers a legion can use, by the OpenSSL names uWSGI users write.

Only the table lives here (no cryptography import), so ``check`` can validate a cipher name
without loading the crypto backend. Key and IV lengths are OpenSSL's EVP defaults, which is
what uWSGI pads or truncates the secret and IV to (uwsgi-spec §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CipherSpec:
    name: str
    algorithm: str      # AES, Blowfish, TripleDES, CAST5, Camellia
    mode: str           # CBC, ECB, CFB, OFB
    key_len: int
    iv_len: int         # 0 for ECB


def _table() -> dict[str, CipherSpec]:
    specs: list[CipherSpec] = []
    for bits in (128, 192, 256):
        for mode, iv in (("cbc", 16), ("ecb", 0), ("cfb", 16), ("ofb", 16)):
            specs.append(CipherSpec(f"aes-{bits}-{mode}", "AES", mode.upper(), bits // 8, iv))
            specs.append(CipherSpec(f"camellia-{bits}-{mode}", "Camellia", mode.upper(), bits // 8, iv))
    for mode, iv in (("cbc", 8), ("ecb", 0), ("cfb", 8), ("ofb", 8)):
        specs.append(CipherSpec(f"bf-{mode}", "Blowfish", mode.upper(), 16, iv))
        specs.append(CipherSpec(f"cast5-{mode}", "CAST5", mode.upper(), 16, iv))
    specs.append(CipherSpec("des-ede3-cbc", "TripleDES", "CBC", 24, 8))
    table = {s.name: s for s in specs}
    table["bf"] = table["bf-cbc"]                 # OpenSSL aliases
    table["blowfish"] = table["bf-cbc"]
    table["aes128"] = table["aes-128-cbc"]
    table["aes192"] = table["aes-192-cbc"]
    table["aes256"] = table["aes-256-cbc"]
    table["des3"] = table["des-ede3-cbc"]
    table["cast"] = table["cast5-cbc"]
    table["cast-cbc"] = table["cast5-cbc"]
    return table


CIPHERS = _table()


def lookup_cipher(name: str) -> CipherSpec:
    """Case-insensitive, like EVP_get_cipherbyname; raises ValueError listing the choices."""
    spec = CIPHERS.get(name.strip().lower())
    if spec is None:
        common = "aes-128-cbc, aes-192-cbc, aes-256-cbc, bf-cbc, des-ede3-cbc, cast5-cbc, camellia-*-cbc"
        raise ValueError(f"unknown cipher {name!r} (supported: {common}, and the ecb/cfb/ofb modes of each)")
    return spec
