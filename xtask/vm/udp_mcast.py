"""UDP to an IPv4 multicast group over one interface: `recv GROUP LOCAL PORT COUNT`
joins GROUP on the interface with address LOCAL, prints "listening", then prints
"received N" once COUNT datagrams (or what came within 20 s) arrived; `send GROUP LOCAL
PORT COUNT` sends COUNT numbered datagrams to GROUP out of that interface, 50 ms apart."""
import socket
import struct
import sys
import time


def recv(group, local, port, count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    membership = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(local))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    sock.settimeout(20)
    print("listening", flush=True)
    seen = set()
    try:
        while len(seen) < count:
            data, _ = sock.recvfrom(2048)
            if data.startswith(b"tilde "):
                seen.add(data)
    except socket.timeout:
        pass
    print("received", len(seen), flush=True)


def send(group, local, port, count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for i in range(count):
        sock.sendto(b"tilde %d" % i, (group, port))
        time.sleep(0.05)


if __name__ == "__main__":
    role, group, local, port, count = sys.argv[1:6]
    {"recv": recv, "send": send}[role](group, local, int(port), int(count))
