"""Legion packet encryption, derived exactly as uWSGI derives it (uwsgi-spec §7.3).

uWSGI hands the configured secret and IV straight to OpenSSL's EVP layer, so interoperating
means reproducing EVP's behaviour byte for byte:

* key = the secret's bytes, cut to the cipher's EVP key length or right-padded with NUL bytes;
* IV  = the optional IV string's bytes, cut to the IV length or right-padded with ASCII ``'0'``
  (so "no IV" is ``"0000…"``, not zeros);
* the context is re-initialised before every packet: a *static* IV, identical plaintexts give
  identical ciphertexts. We mirror that with a fresh cryptography context per packet;
* padding is EVP's default: PKCS#7 for the block modes (CBC, ECB) and none for the stream
  modes (CFB, OFB — their EVP block size is 1). CFB here is OpenSSL's full-block CFB
  (``aes-*-cfb`` = CFB128, ``bf-cfb`` = CFB64), which is what cryptography's CFB implements.

This is obfuscation with a shared key, not authenticated encryption: no MAC, static IV, replays
are only limited by the receiver's clock-skew check (uwsgi-spec Q-L8). The wire format has to
stay that way to talk to uWSGI; do not reuse this module for anything else.

Deviations from uWSGI: none on the wire. ``bf-*`` works here even though a uWSGI linked to
OpenSSL 3 refuses it without the legacy provider (Q-L9): cryptography ships Blowfish in its
"decrepit" module, which lets an nsattach node talk to uWSGI nodes built on OpenSSL 1.x.
Secrets and IVs are encoded as UTF-8 (with surrogateescape, so undecodable config bytes survive
unchanged), which is what a C program reading the same ini file would see.
"""

from __future__ import annotations

import warnings

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from nsattach.legion.ciphers import CipherSpec

try:        # cryptography >= 43 keeps the legacy algorithms here
    from cryptography.hazmat.decrepit.ciphers import algorithms as _decrepit_algorithms
except ImportError:     # pragma: no cover - older cryptography
    _decrepit_algorithms = None
try:        # CFB/OFB moved to "decrepit" in newer releases; the old names warn and will go away
    from cryptography.hazmat.decrepit.ciphers import modes as _decrepit_modes
except ImportError:     # pragma: no cover - older cryptography
    _decrepit_modes = None


def _algorithm_class(name: str):
    """Prefer the decrepit home of an algorithm (no deprecation warning, survives removal
    from ``primitives``), fall back to ``primitives`` for AES and older releases."""
    if name == "AES":
        return algorithms.AES
    if _decrepit_algorithms is not None and hasattr(_decrepit_algorithms, name):
        return getattr(_decrepit_algorithms, name)
    return getattr(algorithms, name)


def _mode_class(name: str):
    if name in ("CFB", "OFB") and _decrepit_modes is not None and hasattr(_decrepit_modes, name):
        return getattr(_decrepit_modes, name)
    return getattr(modes, name)


def _fit(data: bytes, length: int, filler: bytes) -> bytes:
    return data[:length] + filler * (length - len(data[:length]))


class LegionCipher:
    """One legion's cipher: fixed key and IV, a new context for every packet."""

    def __init__(self, spec: CipherSpec, secret: str, iv: str | None = None):
        self.spec = spec
        self.key = _fit(secret.encode("utf-8", "surrogateescape"), spec.key_len, b"\0")
        self.iv = _fit((iv or "").encode("utf-8", "surrogateescape"), spec.iv_len, b"0")
        self._algorithm = _algorithm_class(spec.algorithm)(self.key)
        self._padded = spec.mode in ("CBC", "ECB")
        self._block_bytes = self._algorithm.block_size // 8
        if spec.mode == "ECB":
            self._mode_factory = modes.ECB
        else:
            cls = _mode_class(spec.mode)
            self._mode_factory = lambda: cls(self.iv)
        self._cipher()      # fail now (unsupported algorithm/mode) rather than at the first packet

    def _cipher(self) -> Cipher:
        with warnings.catch_warnings():
            # Blowfish/CAST5/Camellia via primitives on older cryptography warn on use.
            warnings.simplefilter("ignore")
            return Cipher(self._algorithm, self._mode_factory())

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._padded:
            padder = padding.PKCS7(self._algorithm.block_size).padder()
            plaintext = padder.update(plaintext) + padder.finalize()
        enc = self._cipher().encryptor()
        return enc.update(plaintext) + enc.finalize()

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Raise ValueError where EVP_DecryptFinal_ex would fail: a block-mode ciphertext that
        is empty or not a whole number of blocks, or bad PKCS#7 padding (the usual symptom of a
        wrong key)."""
        if self._padded and (not ciphertext or len(ciphertext) % self._block_bytes):
            raise ValueError(f"ciphertext length {len(ciphertext)} is not a positive multiple of "
                             f"the {self._block_bytes}-byte block")
        dec = self._cipher().decryptor()
        plaintext = dec.update(ciphertext) + dec.finalize()
        if self._padded:
            unpadder = padding.PKCS7(self._algorithm.block_size).unpadder()
            plaintext = unpadder.update(plaintext) + unpadder.finalize()   # ValueError if bad
        return plaintext
