"""Checks the portable wheel and the sdist that `tests/python/build-wheel.sh` builds.

Usage: python check_wheel.py WHEEL SDIST

- the wheel is abi3 for CPython 3.9+ and manylinux2014 (`cp39-abi3-manylinux_2_17_<arch>`, or
  its alias `manylinux2014_<arch>`, for this machine's arch), in its name and WHEEL metadata;
- its extension module is stripped: no `.symtab` and no `.debug_*` section;
- every GLIBC symbol version it requires is 2.17 or older (read from `.gnu.version_r`), and it
  imports no symbol without a version but Python's own (one glibc 2.17 lacks, like fcntl64);
- the sdist holds what a build needs: the workspace manifest, `Cargo.lock`, `pyproject.toml`,
  the sources of crabnet-py and crabnet-core (and the dashboard files crabnet-core embeds), the
  patched futures-timer, libp2p-gossipsub, libp2p-kad and negentropy in `vendor/`, and the
  Python package.

Standard library only (a small ELF64 reader), so it runs in any Python 3.9+.
"""

from __future__ import annotations

import platform
import re
import struct
import sys
import tarfile
import zipfile
from pathlib import PurePosixPath
from typing import List, Set, Tuple

MAX_GLIBC = (2, 17)
ABI_TAG = "cp39-abi3"
PLATFORM_TAGS = {f"manylinux_2_17_{platform.machine()}", f"manylinux2014_{platform.machine()}"}
SHT_DYNSYM = 11
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF


class CheckError(Exception):
    """A property of the wheel or the sdist that does not hold."""


def elf_sections(data: bytes) -> List[Tuple[str, int, int, int, int]]:
    """(name, type, offset, size, link) of every section of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise CheckError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for index in range(shnum):
        name, kind, _flags, _addr, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + index * shentsize
        )
        headers.append((name, kind, offset, size, link))
    names_offset = headers[shstrndx][2]
    return [
        (c_string(data, names_offset + name), kind, offset, size, link)
        for name, kind, offset, size, link in headers
    ]


def c_string(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode()


def required_versions(data: bytes) -> Set[str]:
    """Every symbol version (`GLIBC_2.14`, ...) the file needs from its shared libraries."""
    sections = elf_sections(data)
    needed = [s for s in sections if s[1] == SHT_GNU_VERNEED]
    if not needed:
        return set()
    _name, _kind, offset, _size, link = needed[0]
    strtab = sections[link][2]
    versions: Set[str] = set()
    entry = offset
    while True:
        _version, count, _file, aux, next_entry = struct.unpack_from("<HHIII", data, entry)
        item = entry + aux
        for _ in range(count):
            _hash, _flags, _other, name, next_aux = struct.unpack_from("<IHHII", data, item)
            versions.add(c_string(data, strtab + name))
            item += next_aux
        if next_entry == 0:
            return versions
        entry += next_entry


def unversioned_imports(data: bytes) -> List[str]:
    """Undefined, non-weak dynamic symbols without a symbol version, other than Python's own.

    Such a reference binds to whatever the loading system's libc has: linked against glibc 2.17
    every libc function carries a version, so one without a version is a function that glibc
    2.17 does not have (the link leaves it open; the module would fail to load there).
    """
    sections = elf_sections(data)
    dynsym = [s for s in sections if s[1] == SHT_DYNSYM]
    versym = [s for s in sections if s[1] == SHT_GNU_VERSYM]
    if not dynsym:
        raise CheckError("no dynamic symbol table")
    _name, _kind, offset, size, link = dynsym[0]
    strtab = sections[link][2]
    names: List[str] = []
    for index in range(1, size // 24):
        name, info, _other, shndx, _value, _size = struct.unpack_from(
            "<IBBHQQ", data, offset + 24 * index
        )
        version = struct.unpack_from("<H", data, versym[0][2] + 2 * index)[0] if versym else 0
        symbol = c_string(data, strtab + name)
        undefined_strong = shndx == 0 and info >> 4 != 2  # STB_WEAK is 2
        if undefined_strong and version & 0x7FFF <= 1 and not symbol.startswith(("Py", "_Py")):
            names.append(symbol)
    return names


def glibc_version(name: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in name[len("GLIBC_") :].split("."))


def check_wheel(path: str) -> List[str]:
    name = PurePosixPath(path).name
    match = re.fullmatch(r"crabnet-[^-]+-(cp\d+)-(abi3)-([^-]+)\.whl", name)
    if not match:
        raise CheckError(f"{name}: not an abi3 wheel of crabnet")
    platforms = set(match.group(3).split("."))
    if f"{match.group(1)}-{match.group(2)}" != ABI_TAG or not platforms & PLATFORM_TAGS:
        raise CheckError(f"{name}: tags are not {ABI_TAG} + {sorted(PLATFORM_TAGS)}")
    with zipfile.ZipFile(path) as wheel:
        metadata = [n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL")]
        tags = {
            line.split(":", 1)[1].strip()
            for line in wheel.read(metadata[0]).decode().splitlines()
            if line.startswith("Tag:")
        }
        wanted = {f"{ABI_TAG}-{platform}" for platform in PLATFORM_TAGS}
        if not tags or not tags <= {f"{ABI_TAG}-{p}" for p in platforms} or not tags & wanted:
            raise CheckError(f"{name}: WHEEL tags {sorted(tags)} are not {sorted(wanted)}")
        modules = [n for n in wheel.namelist() if n.startswith("crabnet/_crabnet") and ".so" in n]
        if len(modules) != 1 or not modules[0].endswith(".abi3.so"):
            raise CheckError(f"{name}: expected one crabnet/_crabnet.abi3.so, found {modules}")
        data = wheel.read(modules[0])
    names = [section[0] for section in elf_sections(data)]
    unstripped = sorted(n for n in names if n == ".symtab" or n.startswith(".debug"))
    if unstripped:
        raise CheckError(f"{modules[0]} is not stripped: it has {', '.join(unstripped)}")
    glibc = sorted(
        (v for v in required_versions(data) if v.startswith("GLIBC_")), key=glibc_version
    )
    if not glibc or glibc_version(glibc[-1]) > MAX_GLIBC:
        raise CheckError(f"{modules[0]} needs {glibc[-1] if glibc else 'no GLIBC'} (> 2.17)")
    unversioned = unversioned_imports(data)
    if unversioned:
        raise CheckError(f"{modules[0]} imports without a version: {', '.join(unversioned)}")
    return [
        f"{name}: tags {', '.join(sorted(tags))}",
        f"{modules[0]}: {len(data) / 1e6:.1f} MB, stripped, newest glibc symbol {glibc[-1]}",
    ]


def check_sdist(path: str) -> List[str]:
    with tarfile.open(path) as sdist:
        names = {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix() for n in sdist.getnames()}
    needed = [
        "Cargo.toml",
        "Cargo.lock",
        "pyproject.toml",
        "crabnet-py/Cargo.toml",
        "crabnet-py/src/lib.rs",
        "crabnet-core/Cargo.toml",
        "crabnet-core/src/lib.rs",
        "crabnet-core/src/bin/crabnet.rs",
        "crabnet-core/web/index.html",
        # The patched futures-timer that the workspace's [patch.crates-io] names.
        "vendor/futures-timer/Cargo.toml",
        "vendor/futures-timer/src/native/global.rs",
        # The patched libp2p-gossipsub, also named by [patch.crates-io].
        "vendor/libp2p-gossipsub/Cargo.toml",
        "vendor/libp2p-gossipsub/src/handler.rs",
        # The patched libp2p-kad, also named by [patch.crates-io].
        "vendor/libp2p-kad/Cargo.toml",
        "vendor/libp2p-kad/src/kbucket/bucket.rs",
        # negentropy with its fingerprint type exported, a path dependency of crabnet-core.
        "vendor/negentropy/Cargo.toml",
        "vendor/negentropy/src/lib.rs",
        "python/crabnet/__init__.py",
        "python/crabnet/_crabnet.pyi",
        "python/crabnet/py.typed",
    ]
    missing = [n for n in needed if n not in names]
    if missing:
        raise CheckError(f"{PurePosixPath(path).name} lacks {', '.join(missing)}")
    core = sum(1 for n in names if n.startswith("crabnet-core/src/"))
    return [f"{PurePosixPath(path).name}: {len(names)} files, {core} crabnet-core sources"]


def main(argv: List[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        lines = check_wheel(argv[1]) + check_sdist(argv[2])
    except CheckError as error:
        print(f"check_wheel: FAIL: {error}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"check_wheel: ok: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
