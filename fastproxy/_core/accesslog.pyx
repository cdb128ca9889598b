# cython: language_level=3
"""Access logs: Envoy's substitution format strings, and the file / stdout loggers.

`compile_format(text)` turns a format string ("plain text %OPERATOR% ...") into a `Formatter`
whose `format(entry)` renders one `AccessLogEntry` as bytes.  `FileAccessLog` and
`StdoutAccessLog` append the rendered lines to a buffer that is written out at most every
FLUSH_INTERVAL seconds (through a timer on the running event loop) or as soon as it holds more
than FLUSH_BYTES; without a running loop each line is written at once.
"""
import asyncio
import atexit
import os
import re
import time

# Envoy's default format (used when a logger has no format of its own).
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)
DEFAULT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%E3SZ"

FLUSH_INTERVAL = 0.1
FLUSH_BYTES = 64 * 1024

# Short codes, in the order of the RF_* bits.
_FLAG_CODES = (
    (RF_LR, "LR"), (RF_UH, "UH"), (RF_UT, "UT"), (RF_LH, "LH"), (RF_UF, "UF"), (RF_UC, "UC"),
    (RF_UO, "UO"), (RF_NR, "NR"), (RF_DI, "DI"), (RF_FI, "FI"), (RF_RL, "RL"),
    (RF_UAEX, "UAEX"), (RF_RLSE, "RLSE"), (RF_DC, "DC"), (RF_URX, "URX"), (RF_SI, "SI"),
    (RF_IH, "IH"), (RF_DPE, "DPE"), (RF_UMSDR, "UMSDR"), (RF_RFCF, "RFCF"), (RF_NFCF, "NFCF"),
    (RF_DT, "DT"), (RF_UPE, "UPE"), (RF_NC, "NC"), (RF_OM, "OM"),
)


def flags_string(int flags, list order=None):
    """Envoy's RESPONSE_FLAGS text for a RF_* bitmask ("-" when none is set): in the order the
    flags were set when `order` says it, else in the bits' order."""
    if flags == 0:
        return "-"
    if order:
        codes = dict(_FLAG_CODES)
        return ",".join([codes[bit] for bit in order if flags & bit and bit in codes])
    return ",".join([code for bit, code in _FLAG_CODES if flags & bit])


cdef class AccessLogEntry:
    def __init__(self, **fields):
        self.start_time = 0
        self.duration = 0
        self.response_code = 0
        self.flags = 0
        self.flag_order = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.protocol = b"HTTP/1.1"
        self.request_headers = {}
        self.upstream_service_time = None
        self.upstream_host = None
        self.upstream_cluster = None
        self.downstream_remote_address = None
        self.downstream_local_address = None
        self.route_name = None
        self.response_code_details = None
        for name, value in fields.items():
            setattr(self, name, value)


cdef class AccessLog:
    cpdef log(self, AccessLogEntry entry):
        pass


# ---------------------------------------------------------------------------------------------
# Format compilation

# Kinds of compiled pieces.
cdef enum:
    K_TEXT = 0
    K_START_TIME
    K_REQ
    K_RESP_UST
    K_DASH
    K_PROTOCOL
    K_RESPONSE_CODE
    K_RESPONSE_FLAGS
    K_RESPONSE_CODE_DETAILS
    K_BYTES_RECEIVED
    K_BYTES_SENT
    K_DURATION
    K_UPSTREAM_HOST
    K_UPSTREAM_CLUSTER
    K_DOWNSTREAM_REMOTE_ADDRESS
    K_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT
    K_DOWNSTREAM_LOCAL_ADDRESS
    K_ROUTE_NAME

_SIMPLE = {
    "PROTOCOL": K_PROTOCOL,
    "RESPONSE_CODE": K_RESPONSE_CODE,
    "RESPONSE_FLAGS": K_RESPONSE_FLAGS,
    "RESPONSE_CODE_DETAILS": K_RESPONSE_CODE_DETAILS,
    "BYTES_RECEIVED": K_BYTES_RECEIVED,
    "BYTES_SENT": K_BYTES_SENT,
    "DURATION": K_DURATION,
    "UPSTREAM_HOST": K_UPSTREAM_HOST,
    "UPSTREAM_CLUSTER": K_UPSTREAM_CLUSTER,
    "DOWNSTREAM_REMOTE_ADDRESS": K_DOWNSTREAM_REMOTE_ADDRESS,
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": K_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT,
    "DOWNSTREAM_LOCAL_ADDRESS": K_DOWNSTREAM_LOCAL_ADDRESS,
    "ROUTE_NAME": K_ROUTE_NAME,
}

# %NAME%, %NAME(arg)%, %NAME:len%, %NAME(arg):len%  (the argument may hold '%', not ')')
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_TIME_SPECIAL = re.compile(r"%(?:E([0-9]+)S|([0-9]*)f|s|%|.)", re.S)


cdef class _TimeFormat:
    """START_TIME's strftime format, with Envoy's additions: %E<n>S (seconds with n fractional
    digits), %<n>f (n fractional digits, 9 without n) and %s (seconds since the epoch)."""
    cdef list parts          # str (a strftime chunk) or int: -1 = %s, n >= 0 = n-digit fraction
                             # (n | 0x100 = seconds then n fractional digits)
    cdef long long cached_sec
    cdef list cached

    def __init__(self, str fmt):
        cdef list parts = []
        cdef int pos = 0
        chunk = []
        for m in _TIME_SPECIAL.finditer(fmt):
            chunk.append(fmt[pos:m.start()])
            pos = m.end()
            tok = m.group(0)
            if m.group(1) is not None:
                parts.append("".join(chunk))
                chunk = []
                parts.append(0x100 | int(m.group(1)))
            elif m.group(2) is not None:
                parts.append("".join(chunk))
                chunk = []
                parts.append(int(m.group(2)) if m.group(2) else 9)
            elif tok == "%s":
                parts.append("".join(chunk))
                chunk = []
                parts.append(-1)
            else:
                chunk.append(tok)
        chunk.append(fmt[pos:])
        parts.append("".join(chunk))
        self.parts = [p for p in parts if not (isinstance(p, str) and p == "")]
        self.cached_sec = -1
        self.cached = None

    cdef str render(self, double t):
        cdef long long us = <long long>(t * 1000000.0 + 0.5) if t >= 0 else 0
        cdef long long sec = us // 1000000
        cdef long long frac = us % 1000000
        cdef list out
        cdef int n
        if sec != self.cached_sec:
            tm = time.gmtime(sec)
            rendered = []
            for p in self.parts:
                if isinstance(p, str):
                    rendered.append(time.strftime(p, tm))
                elif p == -1:
                    rendered.append(str(sec))
                elif p & 0x100:
                    rendered.append(time.strftime("%S", tm))
                    rendered.append(p)
                else:
                    rendered.append(p)
            self.cached = rendered
            self.cached_sec = sec
        out = []
        digits = None
        for p in self.cached:
            if isinstance(p, str):
                out.append(p)
                continue
            if digits is None:
                digits = "%06d" % frac + "000"
            n = p & 0xff
            if p & 0x100:
                if n > 0:
                    out.append("." + digits[:n])
            else:
                out.append(digits[:n])
        return "".join(out)


cdef bytes _as_bytes(object value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return <bytes>value
    if isinstance(value, str):
        return (<str>value).encode("utf-8", "surrogateescape")
    return str(value).encode()


cdef class Formatter:
    """A compiled format string.  `wanted`: the lower-case request header names it reads."""
    cdef list pieces          # tuples (kind, arg, arg2, max_len)
    cdef readonly tuple wanted
    cdef readonly str source

    def __init__(self, str text):
        self.source = text
        self.pieces = []
        wanted = []
        cdef int pos = 0
        cdef int n = len(text)
        literal = []
        while pos < n:
            i = text.find("%", pos)
            if i < 0:
                literal.append(text[pos:])
                break
            literal.append(text[pos:i])
            if text.startswith("%%", i):
                literal.append("%")
                pos = i + 2
                continue
            m = _COMMAND.match(text, i)
            if m is None:
                raise ValueError(f"Incorrect configuration: {text}. Couldn't find valid command "
                                 f"at position {i}")
            if literal:
                self._text("".join(literal))
                literal = []
            self._command(m.group(1), m.group(2), m.group(3), wanted)
            pos = m.end()
        if literal:
            self._text("".join(literal))
        self.wanted = tuple(wanted)

    def _text(self, str s):
        if s:
            self.pieces.append((K_TEXT, s.encode("utf-8"), None, -1))

    def _command(self, str name, arg, length, list wanted):
        max_len = int(length) if length is not None else -1
        if name == "START_TIME":
            fmt = arg if arg else DEFAULT_TIME_FORMAT
            self.pieces.append((K_START_TIME, _TimeFormat(fmt), None, max_len))
        elif name == "REQ":
            if arg is None:
                raise ValueError(f"REQ requires parameters (a header name): %{name}%")
            main, sep, alt = arg.partition("?")
            if sep and "?" in alt:
                raise ValueError(f"More than 1 alternative header specified in token: {arg}")
            if not main or (sep and not alt):
                raise ValueError(f"Invalid header configuration in token: {arg}")
            main = main.lower()
            alt = alt.lower() if sep else None
            for h in (main, alt):
                if h is not None and h not in wanted:
                    wanted.append(h)
            self.pieces.append((K_REQ, main, alt, max_len))
        elif name == "RESP":
            if arg is None:
                raise ValueError(f"RESP requires parameters (a header name): %{name}%")
            main = arg.partition("?")[0].lower()
            kind = K_RESP_UST if main == "x-envoy-upstream-service-time" else K_DASH
            self.pieces.append((kind, None, None, max_len))
        elif name in _SIMPLE:
            if arg is not None or length is not None:
                raise ValueError(f"{name} does not take any parameters or length")
            self.pieces.append((_SIMPLE[name], None, None, -1))
        else:
            raise ValueError(f"Not supported field in StreamInfo: {name}")

    cpdef bytes format(self, AccessLogEntry entry):
        cdef list out = []
        cdef tuple piece
        cdef int kind
        cdef object value
        for piece in self.pieces:
            kind = piece[0]
            if kind == K_TEXT:
                out.append(piece[1])
                continue
            value = self._value(kind, piece, entry)
            if value is None:
                out.append(b"-")
                continue
            if piece[3] >= 0 and len(value) > piece[3]:
                value = value[:piece[3]]
            out.append(value)
        return b"".join(out)

    cdef object _value(self, int kind, tuple piece, AccessLogEntry e):
        cdef object v
        if kind == K_START_TIME:
            return (<_TimeFormat>piece[1]).render(e.start_time).encode("utf-8")
        if kind == K_REQ:
            headers = e.request_headers
            if headers is None:
                return None
            v = headers.get(piece[1])
            if v is None and piece[2] is not None:
                v = headers.get(piece[2])
            return _as_bytes(v)
        if kind == K_RESP_UST:
            return _as_bytes(e.upstream_service_time)
        if kind == K_DASH:
            return None
        if kind == K_PROTOCOL:
            return e.protocol
        if kind == K_RESPONSE_CODE:
            return b"%d" % e.response_code
        if kind == K_RESPONSE_FLAGS:
            return flags_string(e.flags, e.flag_order).encode()
        if kind == K_RESPONSE_CODE_DETAILS:
            return _as_bytes(e.response_code_details) or None
        if kind == K_BYTES_RECEIVED:
            return b"%d" % e.bytes_received
        if kind == K_BYTES_SENT:
            return b"%d" % e.bytes_sent
        if kind == K_DURATION:
            return b"%d" % <long long>(e.duration * 1000.0 + 1e-6) if e.duration > 0 else b"0"
        if kind == K_UPSTREAM_HOST:
            return e.upstream_host or None
        if kind == K_UPSTREAM_CLUSTER:
            return _as_bytes(e.upstream_cluster) or None
        if kind == K_DOWNSTREAM_REMOTE_ADDRESS:
            return e.downstream_remote_address or None
        if kind == K_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
            return _strip_port(e.downstream_remote_address)
        if kind == K_DOWNSTREAM_LOCAL_ADDRESS:
            return e.downstream_local_address or None
        if kind == K_ROUTE_NAME:
            return _as_bytes(e.route_name) or None
        return None


cdef object _strip_port(bytes addr):
    if not addr:
        return None
    if addr.startswith(b"["):
        end = addr.find(b"]")
        return addr[1:end] if end > 0 else addr
    host, sep, port = addr.rpartition(b":")
    if not sep or b":" in host:
        return addr
    return host


def compile_format(text=None):
    """A `Formatter` for an Envoy format string (Envoy's default when None).  Raises ValueError
    (naming the operator) for what is not supported."""
    return Formatter(DEFAULT_FORMAT if text is None else text)


# ---------------------------------------------------------------------------------------------
# Output: buffered, shared per path

cdef class _Sink:
    cdef int fd
    cdef bint own_fd
    cdef bytearray buf
    cdef object timer

    def __init__(self, int fd, bint own_fd):
        self.fd = fd
        self.own_fd = own_fd
        self.buf = bytearray()
        self.timer = None

    cdef void write(self, bytes line):
        self.buf += line
        if len(self.buf) > FLUSH_BYTES:
            self.flush()
            return
        if self.timer is not None:
            return
        loop = asyncio._get_running_loop()
        if loop is None:
            self.flush()
        else:
            self.timer = loop.call_later(FLUSH_INTERVAL, self._on_timer)

    def _on_timer(self):
        self.timer = None
        self.flush()

    cpdef flush(self):
        cdef Py_ssize_t done
        if not self.buf:
            return
        view = memoryview(self.buf)
        done = 0
        try:
            while done < len(self.buf):
                try:
                    done += os.write(self.fd, view[done:])
                except InterruptedError:
                    continue
                except BlockingIOError:
                    break
        except OSError:
            done = len(self.buf)  # the file is gone or full: drop what could not be written
        finally:
            view.release()
        del self.buf[:done]
        if self.buf and self.timer is None:
            loop = asyncio._get_running_loop()
            if loop is not None:
                self.timer = loop.call_later(FLUSH_INTERVAL, self._on_timer)

    def close(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()
        if self.own_fd:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.own_fd = False


_sinks = {}


def _sink_for(str path):
    sink = _sinks.get(path)
    if sink is None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        sink = _Sink(fd, True)
        _sinks[path] = sink
    return sink


def _stdout_sink():
    sink = _sinks.get(None)
    if sink is None:
        sink = _Sink(1, False)
        _sinks[None] = sink
    return sink


def flush_all():
    """Write out every logger's buffer (also run at exit)."""
    for sink in list(_sinks.values()):
        (<_Sink>sink).flush()


def close_all():
    for sink in list(_sinks.values()):
        sink.close()
    _sinks.clear()


atexit.register(flush_all)


cdef class FileAccessLog(AccessLog):
    """envoy.access_loggers.file: `path` (opened for appending, created if missing)."""
    cdef readonly str path
    cdef readonly Formatter formatter
    cdef _Sink sink

    def __init__(self, str path, format=None):
        self.path = path
        self.formatter = compile_format(format)
        self.wanted = self.formatter.wanted
        self.sink = _sink_for(path)

    cpdef log(self, AccessLogEntry entry):
        self.sink.write(self.formatter.format(entry))

    def flush(self):
        self.sink.flush()


cdef class StdoutAccessLog(AccessLog):
    """envoy.access_loggers.stdout: the process's standard output."""
    cdef readonly Formatter formatter
    cdef _Sink sink

    def __init__(self, format=None):
        self.formatter = compile_format(format)
        self.wanted = self.formatter.wanted
        self.sink = _stdout_sink()

    cpdef log(self, AccessLogEntry entry):
        self.sink.write(self.formatter.format(entry))

    def flush(self):
        self.sink.flush()


def make_access_logs(hcm_model):
    """The AccessLog objects of a compiled HttpConnectionManager, or None when it has none."""
    configs = getattr(hcm_model, "access_logs", None)
    if not configs:
        return None
    logs = []
    for cfg in configs:
        if cfg.kind == "file":
            logs.append(FileAccessLog(cfg.path, cfg.format))
        elif cfg.kind == "stdout":
            logs.append(StdoutAccessLog(cfg.format))
        else:
            raise ValueError(f"unknown access log kind {cfg.kind!r}")
    return logs
