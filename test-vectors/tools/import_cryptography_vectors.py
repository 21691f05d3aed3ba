#!/usr/bin/env python3
"""Copy (and trim) the vector files used by tests/vectors.rs out of an
unpacked `cryptography-vectors` wheel (PyPI, pyca/cryptography project).

Usage:
  pip download --no-deps -d /tmp/cv cryptography-vectors==50.0.2
  unzip -q /tmp/cv/cryptography_vectors-*.whl -d /tmp/cv/x
  python3 tools/import_cryptography_vectors.py /tmp/cv/x/cryptography_vectors
"""
import os
import re
import math
import shutil
import sys

SRC = sys.argv[1]
DST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")


def copy(rel, dst_rel):
    dst = os.path.join(DST, dst_rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(os.path.join(SRC, rel), dst)


# NIST CAVP AES (AESAVS): KAT (GFSbox, KeySbox, VarKey, VarTxt) and MMT, ECB + CBC
for mode in ("ECB", "CBC"):
    for kind in ("GFSbox", "KeySbox", "VarKey", "VarTxt", "MMT"):
        for bits in ("128", "192", "256"):
            name = f"{mode}{kind}{bits}.rsp"
            copy(f"ciphers/AES/{mode}/{name}", f"nist-cavp/aes/{name}")

# NIST CAVP TDES (TDESAVS): KAT and MMT (keying options 1 and 2), ECB + CBC
for mode, prefix in (("ECB", "TECB"), ("CBC", "TCBC")):
    for kind in ("invperm", "permop", "subtab", "varkey", "vartext", "MMT1", "MMT2", "MMT3"):
        name = f"{prefix}{kind}.rsp"
        copy(f"ciphers/3DES/{mode}/{name}", f"nist-cavp/tdes/{name}")

# SP 800-38B CMAC examples
for n in ("aes128", "aes192", "aes256", "3des"):
    copy(f"CMAC/nist-800-38b-{n}.txt", f"cmac/nist-800-38b-{n}.txt")

# SP 800-108 KBKDF counter mode: keep only the CMAC-AES* sections with the
# given counter locations and widths (the full file is 3.1 MB).
def kbkdf_subset(locations, rlens, dst_rel, header):
    out = []
    keep = False
    hdr = {}
    with open(os.path.join(SRC, "KDF/nist-800-108-KBKDF-CTR.txt")) as f:
        for line in f:
            m = re.match(r"\[(\w+)=(\w+)\]", line.strip())
            if m:
                hdr[m.group(1)] = m.group(2)
                if m.group(1) == "PRF":
                    hdr = {"PRF": m.group(2)}
                keep = (hdr.get("PRF", "").startswith("CMAC_AES")
                        and hdr.get("CTRLOCATION") in locations
                        and hdr.get("RLEN") in rlens)
                if keep:
                    out.append(f"[PRF={hdr['PRF']}]\n[CTRLOCATION={hdr['CTRLOCATION']}]\n"
                               f"[RLEN={hdr['RLEN']}]\n")
                continue
            if keep:
                out.append(line)
    os.makedirs(os.path.join(DST, "kbkdf"), exist_ok=True)
    with open(os.path.join(DST, dst_rel), "w") as f:
        f.write(header)
        f.write("".join(out))


kbkdf_subset(("BEFORE_FIXED",), ("8_BITS",), "kbkdf/kbkdf-ctr-cmac-aes-before-fixed-r8.txt",
             "# Subset of NIST CAVP KBKDF (SP 800-108) counter mode vectors:\n"
             "# PRF = CMAC_AES128/192/256, CTRLOCATION = BEFORE_FIXED, RLEN = 8_BITS only.\n")
kbkdf_subset(("BEFORE_FIXED",), ("16_BITS", "24_BITS", "32_BITS"),
             "kbkdf/kbkdf-ctr-cmac-aes-before-fixed-r16-r24-r32.txt",
             "# Subset of NIST CAVP KBKDF (SP 800-108) counter mode vectors:\n"
             "# PRF = CMAC_AES128/192/256, CTRLOCATION = BEFORE_FIXED,\n"
             "# RLEN = 16_BITS, 24_BITS, 32_BITS (RLEN = 8_BITS is in the -r8 file).\n")
kbkdf_subset(("MIDDLE_FIXED",), ("8_BITS", "16_BITS", "24_BITS", "32_BITS"),
             "kbkdf/kbkdf-ctr-cmac-aes-middle-fixed.txt",
             "# Subset of NIST CAVP KBKDF (SP 800-108) counter mode vectors:\n"
             "# PRF = CMAC_AES128/192/256, CTRLOCATION = MIDDLE_FIXED,\n"
             "# RLEN = 8_BITS, 16_BITS, 24_BITS, 32_BITS.\n")
kbkdf_subset(("AFTER_FIXED",), ("8_BITS", "16_BITS", "24_BITS", "32_BITS"),
             "kbkdf/kbkdf-ctr-cmac-aes-after-fixed.txt",
             "# Subset of NIST CAVP KBKDF (SP 800-108) counter mode vectors:\n"
             "# PRF = CMAC_AES128/192/256, CTRLOCATION = AFTER_FIXED,\n"
             "# RLEN = 8_BITS, 16_BITS, 24_BITS, 32_BITS.\n")


# RSA SigVer (FIPS 186-3): keep the SHA256 records only
def sha256_only(rel, dst_rel, header="# Trimmed: SHAAlg = SHA256 records only "
                "(plus their [mod] / n / p / q context).\n", key_block=None):
    with open(os.path.join(SRC, rel)) as f:
        text = f.read()
    blocks = re.split(r"\n\s*\n", text)
    kept = []
    for b in blocks:
        if "SHAAlg" in b and "SHAAlg = SHA256" not in b:
            continue
        b = b.strip("\n")
        if key_block:
            b = key_block(b)
        kept.append(b)
    dst = os.path.join(DST, dst_rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w") as f:
        f.write(header)
        f.write("\n\n".join(kept) + "\n")


def recover_primes(n, e, d):
    """Factor n from (n, e, d): the standard probabilistic method (e.g. NIST
    SP 800-56B rev. 2, appendix C), with the bases 2, 3, 5, ... tried in turn."""
    k = d * e - 1
    t = (k & -k).bit_length() - 1
    r = k >> t
    for g in range(2, 1000):
        y = pow(g, r, n)
        if y in (1, n - 1):
            continue
        for _ in range(t):
            x = pow(y, 2, n)
            if x == 1:
                p = math.gcd(y - 1, n)
                q = n // p
                assert 1 < p < n and p * q == n
                return max(p, q), min(p, q)
            if x == n - 1:
                break
            y = x
    raise ValueError("could not factor n")


_last_n = {}


def add_primes(block):
    """Append p and q, recovered from n, e, d, to a SigGen15_186-2.txt key
    block (there n stands in a block of its own, before the e / d block)."""
    fields = dict(re.findall(r"^(\w+) = ([0-9a-fA-F]+)$", block, re.M))
    if "n" in fields:
        _last_n["n"] = fields["n"]
    if "d" not in fields:
        return block
    n_hex = fields.get("n", _last_n["n"])
    n, e, d = int(n_hex, 16), int(fields["e"], 16), int(fields["d"], 16)
    p, q = recover_primes(n, e, d)
    width = len(n_hex) // 4  # hex digits of each prime (half the modulus)
    return (block + "\n# p, q: not in the NIST file; recovered from n, e, d by"
            " tools/import_cryptography_vectors.py\n"
            f"p = {p:0{width}x}\nq = {q:0{width}x}")


sha256_only("asymmetric/RSA/FIPS_186-2/SigVer15_186-3.rsp", "rsa/SigVer15_186-3-SHA256.rsp")
sha256_only("asymmetric/RSA/FIPS_186-2/SigVerPSS_186-3.rsp", "rsa/SigVerPSS_186-3-SHA256.rsp")

# RSA PKCS#1 v1.5 SigGen. The FIPS 186-3 response file gives n and e only (no
# private key), so its signatures can only be verified; the FIPS 186-2 example
# file SigGen15_186-2.txt also gives d ("added to the file for testing
# purposes", Readme.txt), so signing can be checked against it.
sha256_only("asymmetric/RSA/FIPS_186-2/SigGen15_186-3.rsp", "rsa/SigGen15_186-3-SHA256.rsp",
            header="# Trimmed: SHAAlg = SHA256 records only (plus their [mod] / n / e context).\n")
sha256_only("asymmetric/RSA/FIPS_186-2/SigGen15_186-2.txt", "rsa/SigGen15_186-2-SHA256.txt",
            header="# Trimmed: SHAAlg = SHA256 records only (plus their [mod] / n / e / d context);\n"
                   "# p and q added to each key (see the comment there).\n",
            key_block=add_primes)

# RSA OAEP SHA-256 / MGF1-SHA-256 (pyca custom vectors, checked against Bouncy Castle)
copy("asymmetric/RSA/oaep-custom/oaep-sha256-sha256.txt", "rsa/oaep-sha256-sha256.txt")
