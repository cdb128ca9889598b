"""Small conversions shared by the compile modules: durations, wrappers, enum names, addresses."""
from __future__ import annotations

import ipaddress
from typing import Optional

from . import model
from .errors import Errors, join


def duration_ms(d) -> int:
    """Duration -> whole milliseconds; a positive duration under 1 ms becomes 1 (not 'disabled')."""
    ms = d.seconds * 1000 + d.nanos // 1_000_000
    if ms == 0 and (d.seconds > 0 or d.nanos > 0):
        return 1
    return ms


def opt_duration_ms(msg, name: str, default: int) -> int:
    return duration_ms(getattr(msg, name)) if msg.HasField(name) else default


def wrapped(msg, name: str, default):
    """Value of a google.protobuf wrapper field, or `default` when unset."""
    return getattr(msg, name).value if msg.HasField(name) else default


def enum_name(msg, name: str) -> str:
    field = msg.DESCRIPTOR.fields_by_name[name]
    value = getattr(msg, name)
    ev = field.enum_type.values_by_number.get(value)
    return ev.name if ev is not None else str(value)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def socket_address(addr, path: str, errors: Errors, need_ip: bool = True) -> Optional[model.SocketAddress]:
    """core.v3.Address (socket_address only, TCP) -> SocketAddress, or None after reporting."""
    if addr.WhichOneof("address") != "socket_address":
        errors.add(join(path, "socket_address"), "value is required")
        return None
    sa = addr.socket_address
    spath = join(path, "socket_address")
    if sa.protocol != 0:  # TCP
        errors.add(join(spath, "protocol"), f"{enum_name(sa, 'protocol')} not supported")
    if need_ip and sa.address and not is_ip(sa.address):
        errors.add(join(spath, "address"), f"malformed IP address: {sa.address}")
    return model.SocketAddress(sa.address, sa.port_value)
