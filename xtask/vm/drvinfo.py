"""Prints the driver name `ethtool -i IFACE` would show (ETHTOOL_GDRVINFO through
SIOCETHTOOL), for guests without ethtool: `drvinfo.py IFACE`."""
import array
import fcntl
import socket
import struct
import sys

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
# struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32], bus_info[32],
# erom_version[32], reserved2[12], n_priv_flags, n_stats, testinfo_len, eedump_len,
# regdump_len.
DRVINFO_LEN = 196


def main(name):
    info = array.array("B", struct.pack("I", ETHTOOL_GDRVINFO) + bytes(DRVINFO_LEN - 4))
    address, _ = info.buffer_info()
    ifreq = struct.pack("16sP", name.encode(), address).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    driver = info.tobytes()[4:36].split(b"\0")[0].decode()
    print("driver:", driver)


if __name__ == "__main__":
    main(sys.argv[1])
