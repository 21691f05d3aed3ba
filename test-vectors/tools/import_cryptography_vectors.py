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

# SP 800-108 KBKDF counter mode: keep only CMAC-AES*, BEFORE_FIXED, RLEN=8
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
                    and hdr.get("CTRLOCATION") == "BEFORE_FIXED"
                    and hdr.get("RLEN") == "8_BITS")
            if keep:
                out.append(f"[PRF={hdr['PRF']}]\n[CTRLOCATION=BEFORE_FIXED]\n[RLEN=8_BITS]\n")
            continue
        if keep:
            out.append(line)
os.makedirs(os.path.join(DST, "kbkdf"), exist_ok=True)
with open(os.path.join(DST, "kbkdf/kbkdf-ctr-cmac-aes-before-fixed-r8.txt"), "w") as f:
    f.write("# Subset of NIST CAVP KBKDF (SP 800-108) counter mode vectors:\n")
    f.write("# PRF = CMAC_AES128/192/256, CTRLOCATION = BEFORE_FIXED, RLEN = 8_BITS only.\n")
    f.write("".join(out))


# RSA SigVer (FIPS 186-3): keep the SHA256 records only
def sha256_only(rel, dst_rel):
    with open(os.path.join(SRC, rel)) as f:
        text = f.read()
    blocks = re.split(r"\n\s*\n", text)
    kept = []
    for b in blocks:
        if "SHAAlg" in b and "SHAAlg = SHA256" not in b:
            continue
        kept.append(b.strip("\n"))
    dst = os.path.join(DST, dst_rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w") as f:
        f.write("# Trimmed: SHAAlg = SHA256 records only (plus their [mod] / n / p / q context).\n")
        f.write("\n\n".join(kept) + "\n")


sha256_only("asymmetric/RSA/FIPS_186-2/SigVer15_186-3.rsp", "rsa/SigVer15_186-3-SHA256.rsp")
sha256_only("asymmetric/RSA/FIPS_186-2/SigVerPSS_186-3.rsp", "rsa/SigVerPSS_186-3-SHA256.rsp")

# RSA OAEP SHA-256 / MGF1-SHA-256 (pyca custom vectors, checked against Bouncy Castle)
copy("asymmetric/RSA/oaep-custom/oaep-sha256-sha256.txt", "rsa/oaep-sha256-sha256.txt")
