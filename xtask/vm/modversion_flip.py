"""Writes a copy of a module whose `__versions` entry for one symbol has a wrong CRC:
`modversion_flip.py IN OUT PREFIX` flips the CRC of the first imported symbol whose name
starts with PREFIX and prints that name. The `modversions` scenario loads the copy to
see the loader compare that symbol's version (x86_64 ELF: entries are an 8-byte CRC and
a 56-byte name)."""
import struct
import sys

ENTRY = 64


def main():
    src, dst, prefix = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    data = bytearray(open(src, "rb").read())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, strtab, _ = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", strtab + name)
        if data[strtab + name:end] != b"__versions":
            continue
        for entry in range(offset, offset + size, ENTRY):
            symbol = bytes(data[entry + 8:entry + ENTRY]).split(b"\0", 1)[0]
            if symbol.startswith(prefix):
                crc, = struct.unpack_from("<Q", data, entry)
                struct.pack_into("<Q", data, entry, crc ^ 0xFFFFFFFF)
                open(dst, "wb").write(data)
                print(symbol.decode())
                return
        sys.exit(f"no __versions entry starting with {prefix.decode()}")
    sys.exit("no __versions section")


main()
