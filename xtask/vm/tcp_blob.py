"""Moves a file over TCP and says what arrived: `recv ADDR PORT` waits for one
connection and prints the byte count and SHA-256 of everything read until the sender
closes; `send ADDR PORT FILE` connects, sends the file and closes its side. The
scenarios compare the receiver's line with the file's own (`sha256sum`)."""
import hashlib
import socket
import sys


def recv(addr, port):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((addr, port))
    server.listen(1)
    print("listening", flush=True)
    conn, _ = server.accept()
    digest = hashlib.sha256()
    count = 0
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        digest.update(data)
        count += len(data)
    print(count, digest.hexdigest(), flush=True)


def send(addr, port, path):
    conn = socket.create_connection((addr, port), timeout=60)
    with open(path, "rb") as f:
        while True:
            data = f.read(1 << 16)
            if not data:
                break
            conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), sys.argv[4])
