"""An origin that answers each request with the next status of a script (then 200)."""
import socket
import threading
import time


class ScriptedOrigin:
    """Answers each request with the next status of a script (then 200), counting requests,
    after the next delay of `delays` (then at once).  A status of 0 closes the connection
    without answering."""

    def __init__(self, script=(), delays=()):
        self.script = list(script)
        self.delays = list(delays)  # seconds to wait before answering the n-th request
        self.closed_early = 0       # connections the client closed before an answer
        self.count = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                with self.lock:
                    self.count += 1
                    status = self.script.pop(0) if self.script else 200
                    delay = self.delays.pop(0) if self.delays else 0
                if delay:
                    time.sleep(delay)
                if status == 0:
                    return
                out = b"%d:%s" % (self.port, body)
                conn.sendall(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(out), out))

    def close(self):
        self.sock.close()
