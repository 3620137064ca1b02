"""A network of loopback only, for tests whose programs listen on every interface.

torch's rendezvous store (the TCPStore of ``accelerate launch`` on machine 0) binds its port on all
interfaces, and torch has no setting to bind it to 127.0.0.1. Tests that start such process groups run
them in a network namespace of their own (Linux, as root: ``unshare --net``, entered with ``nsenter``),
whose only interface is its loopback: "every interface" is then 127.0.0.1. Without root the prefix is
empty and the processes run in the machine's network."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager


@contextmanager
def loopback_only():
    """A command prefix that runs a program in a fresh namespace holding only ``lo`` (up); ``[]`` when this
    process may not make one."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        yield []
        return
    holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    try:
        namespace = f"/proc/{holder.pid}/ns/net"
        prefix = ["nsenter", f"--net={namespace}", "--"]
        deadline = time.monotonic() + 10
        while os.readlink(namespace) == os.readlink("/proc/self/ns/net"):  # until unshare has made it
            assert time.monotonic() < deadline and holder.poll() is None, "unshare --net failed"
            time.sleep(0.02)
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        yield prefix
    finally:
        holder.kill()
        holder.wait()
