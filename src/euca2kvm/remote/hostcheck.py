# SPDX-License-Identifier: Apache-2.0
"""The in-use checks of :mod:`euca2kvm.eucalyptus.inuse` on a source host reached over SSH.

One read-only command gathers everything in one round trip, NUL-separated (names from the host
may hold any byte but NUL): each loop device's backing file, each dm device's name, each block
device's holders, and every process's open descriptors with its ``comm``. It is a Python one-liner
(2.7 or 3) or, on a host without Python, the same in POSIX sh with GNU find's ``-printf``
(CentOS 7's findutils; one ``find`` per process, several times slower). Descriptors of this connection's own session
processes (siblings of the command's shell under the connection's sshd: the SFTP server reading
the containers) are not holders, as locally this process is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import FormatError
from ..eucalyptus.inuse import MAX_CMDLINE, MAX_TGTADM_OUTPUT, TGTADM_SHOW, TGTADM_TIMEOUT_S
from .ssh import Connection, parse_url, python_command

# Records: tag NUL a NUL b NUL. L loop backing_file; M dm name; H block-device holder;
# C pid comm (session siblings are tagged S); F fd-link target; P our shell's parent pid.
# find's -printf takes \NNN octal escapes: NUL is written \000 so that a pid's digits never extend it.
_SCRIPT = r"""
printf 'P\0%s\0-\0' "$PPID"
for f in /sys/block/loop*/loop/backing_file; do
  [ -r "$f" ] && printf 'L\0%s\0%s\0' "${f#/sys/block/}" "$(head -c 4096 "$f")"
done
for f in /sys/block/dm-*/dm/name; do [ -r "$f" ] && printf 'M\0%s\0%s\0' "${f#/sys/block/}" "$(head -c 256 "$f")"; done
for d in /sys/block/*/holders/*; do [ -e "$d" ] && printf 'H\0%s\0%s\0' "${d%%/holders/*}" "${d##*/}"; done
for p in /proc/[0-9]*; do
  pid=${p#/proc/}; [ "$pid" = "$$" ] && continue
  pp=; while read -r k v; do [ "$k" = PPid: ] && pp=$v && break; done < "$p/status" 2>/dev/null
  t=C; [ "$pp" = "$PPID" ] && t=S
  printf '%s\0%s\0%s\0' "$t" "$pid" "$(head -c 64 "$p/comm" 2>/dev/null)"
  find "$p/fd" -mindepth 1 -maxdepth 1 -type l -printf "F\000$pid\000%l\000" 2>/dev/null
done
exit 0
""".strip()


# The same records from Python (bytes throughout: py2 str and py3 bytes alike).
_PY = r"""
import os,sys
w=getattr(sys.stdout,'buffer',sys.stdout).write
Z=b'\0'
def rd(p,n):
  try:
    f=open(p,'rb')
    try:return f.read(n).strip()
    finally:f.close()
  except (IOError,OSError):return None
def rec(t,a,b):w(t+Z+a+Z+b+Z)
me=os.getpid();pp=os.getppid()
rec(b'P',b'%d'%pp,b'-')
try:sb=os.listdir(b'/sys/block')
except OSError:sb=[]
for n in sb:
  d=b'/sys/block/'+n
  if n.startswith(b'loop'):
    v=rd(d+b'/loop/backing_file',4096)
    if v:rec(b'L',n+b'/loop',v)
  if n.startswith(b'dm-'):
    v=rd(d+b'/dm/name',256)
    if v:rec(b'M',n+b'/dm',v)
  try:hs=os.listdir(d+b'/holders')
  except OSError:hs=[]
  for h in hs:rec(b'H',d,h)
for p in os.listdir(b'/proc'):
  if not p.isdigit() or int(p)==me:continue
  st=rd(b'/proc/'+p+b'/status',4096) or b''
  par=[l.split()[1] for l in st.split(b'\n') if l.startswith(b'PPid:')]
  rec(b'S' if par and int(par[0])==pp else b'C',p,rd(b'/proc/'+p+b'/comm',64) or b'?')
  try:fds=os.listdir(b'/proc/'+p+b'/fd')
  except OSError:continue
  for fd in fds:
    try:rec(b'F',p,os.readlink(b'/proc/'+p+b'/fd/'+fd))
    except OSError:pass
""".strip()


# pid NUL comm NUL argv[0] NUL per process (for cloudinuse: Eucalyptus daemons, tgtd).
_PROCS_PY = r"""
import os,sys
w=getattr(sys.stdout,'buffer',sys.stdout).write
def rd(p,n):
  try:
    f=open(p,'rb')
    try:return f.read(n)
    finally:f.close()
  except (IOError,OSError):return b''
me=os.getpid()
for p in os.listdir(b'/proc'):
  if not p.isdigit() or int(p)==me:continue
  w(p+b'\0'+rd(b'/proc/'+p+b'/comm',64).strip()+b'\0'+rd(b'/proc/'+p+b'/cmdline',%d).split(b'\0')[0]+b'\0')
""".strip() % MAX_CMDLINE
_PROCS_SH = r"""
for p in /proc/[0-9]*; do
  printf '%s\0%s\0%s\0' "${p#/proc/}" "$(head -c 64 "$p/comm" 2>/dev/null)" \
    "$(head -c 4096 "$p/cmdline" 2>/dev/null | tr '\000' '\n' | head -n 1)"
done
""".strip()
# tgtadm's listing with its status last (stderr joined: it is the message when it failed); 97: no tgtadm.
_TGTADM = ("command -v tgtadm >/dev/null 2>&1 || exit 97; tgtadm " + " ".join(TGTADM_SHOW)
           + " 2>&1; s=$?; echo; echo \"euca2kvm-status $s\"")
NO_TGTADM = 97


class RemoteHost:
    """A source host's loop devices, dm names, block holders and open files (an inuse.Host)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._facts: tuple[dict[str, str], dict[str, str], dict[str, list[str]], dict[str, list[str]]] | None = None

    def path_of(self, name: str) -> str:
        return parse_url(name).path if name.startswith("ssh://") else os.path.normpath(name)

    def _gather(self) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]], dict[str, list[str]]]:
        if self._facts is not None:
            return self._facts
        loops: dict[str, str] = {}
        dms: dict[str, str] = {}
        held: dict[str, list[str]] = {}
        comm: dict[str, str] = {}
        ours: set[str] = set()
        fds: dict[str, list[str]] = {}  # target -> pids
        for tag, a, b in self._triples(python_command(_PY, [], _SCRIPT), "in-use listing", "surrogateescape"):
            if tag == "L" and b:
                dev = a.split("/", 1)[0]
                loops[b.removesuffix(" (deleted)")] = f"/dev/{dev}"
            elif tag == "M" and b:
                dms[b.strip()] = a.split("/", 1)[0]
            elif tag == "H":
                held.setdefault("/dev/" + a.rsplit("/", 1)[-1], []).append(b)
            elif tag in ("C", "S"):
                comm[a] = b.strip() or "?"
                if tag == "S":
                    ours.add(a)
            elif tag == "F" and a not in ours:
                fds.setdefault(b, []).append(a)
        opened = {t: [f"pid {p} ({comm.get(p, '?')})" for p in pids if p not in ours] for t, pids in fds.items()}
        self._facts = (loops, dms, held, {t: w for t, w in opened.items() if w})
        return self._facts

    def _triples(self, command: str, what: str, errors: str) -> list[tuple[str, str, str]]:
        """The NUL-separated (a, b, c) records a listing command prints on the host."""
        _, out = self.conn.run(command)
        fields = out.split(b"\0")
        if fields and fields[-1] == b"":
            fields.pop()
        if len(fields) % 3:
            raise FormatError(f"unexpected answer from the host's {what}", self.conn.name)
        text = [x.decode("utf-8", errors) for x in fields]
        return [(text[i], text[i + 1], text[i + 2]) for i in range(0, len(text), 3)]

    def loop_backings(self) -> dict[str, str]:
        return self._gather()[0]

    def dm_names(self) -> dict[str, str]:
        return self._gather()[1]

    def block_holders(self, path: str) -> list[str]:
        return sorted(self._gather()[2].get(path, []))

    def open_by(self, paths: Iterable[str]) -> dict[str, list[str]]:
        opened = self._gather()[3]
        return {p: opened[p] for p in paths if p in opened}

    @property
    def name(self) -> str:
        return self.conn.name

    def processes(self) -> list[tuple[int, str, str]]:
        found = []
        for pid, comm, argv0 in self._triples(python_command(_PROCS_PY, [], _PROCS_SH), "process listing", "replace"):
            if pid.isdigit():
                found.append((int(pid), comm.strip(), argv0))
        return found

    def tgtadm_show(self) -> tuple[int, str] | None:
        status, out = self.conn.run(_TGTADM, timeout=TGTADM_TIMEOUT_S, limit=MAX_TGTADM_OUTPUT,
                                    ok=(0, NO_TGTADM))
        if status == NO_TGTADM:
            return None
        text, _, last = out.decode("utf-8", "replace").rstrip("\n").rpartition("\n")
        code = last.removeprefix("euca2kvm-status ")
        if code == last or not code.isdigit():
            raise FormatError("unexpected answer from the host's tgtadm", self.conn.name)
        return int(code), text.removesuffix("\n")
