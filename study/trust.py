"""Whether a study folder was written only by people the user trusts -- ssh's rule for keys, applied to a folder
that is code to Ray: `Tuner.restore` unpickles Tune's experiment (tune/tuner.pkl, the searcher and callback
states, cloudpickle blobs inside the experiment state), so whoever can write a study folder runs code as the
next user who resumes it.

The rule: the folder and everything in it that someone else could reach must be owned by the current user (or
root) and writable by no one else; the storage path and every folder above it must not let anyone else swap
the folder (owned by you or root, writable only by trusted people, or sticky like /tmp). A group counts as
trusted when it is the user's private group (Debian's user-private-group scheme: named like the user, no other
member) or when the user names it with `--shared-group` (a study opened to that group on purpose,
`make_study_folder`). A folder nobody else can enter (mode 0700, how mmstudy makes them) is checked at its top
only.
"""
from __future__ import annotations

import grp
import os
import pwd
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import ConfigError

HINT = "a study folder is code to Ray (resume unpickles it): use only your own"


@dataclass(frozen=True)
class Trust:
    """Who besides the current user may have written what mmstudy reads."""
    uid: int
    private_gid: int | None  # the user's private group, if it is one
    shared_gid: int | None   # the group named by --shared-group

    @staticmethod
    def of_user(shared_group: str | None = None) -> "Trust":
        return Trust(os.geteuid(), private_group(), shared_gid(shared_group) if shared_group else None)

    def trusts_group(self, gid: int) -> bool:
        return gid in (self.private_gid, self.shared_gid)

    def trusts_owner(self, st: os.stat_result) -> bool:
        """Owned by the user or root; in a shared study also by anyone of the shared group (a file with that
        group was made by a member, or in a folder of that group that only members can write)."""
        return st.st_uid in (self.uid, 0) or (self.shared_gid is not None and st.st_gid == self.shared_gid)


def private_group() -> int | None:
    """The user's primary group when it is a user-private group (umask 002 is then safe, as on Debian/Ubuntu)."""
    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(user.pw_gid)
    except KeyError:
        return None
    return group.gr_gid if group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name} else None


def shared_gid(name: str) -> int:
    """The gid of `--shared-group NAME`; the user must be in it (root may name any group)."""
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"--shared-group: no group '{name}' on this machine (allowed: a group you are in: "
                          f"{', '.join(group_names(os.getgroups())) or 'none'})") from None
    if gid not in os.getgroups() and gid != os.getegid() and os.geteuid() != 0:
        raise ConfigError(f"--shared-group: you are not in group '{name}' (allowed: "
                          f"{', '.join(group_names(os.getgroups())) or 'none'})")
    return gid


def group_names(gids) -> list[str]:
    return [group_name(g) for g in sorted(set(gids))]


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def untrusted(path: Path, st: os.stat_result, trust: Trust, reachable: bool) -> str | None:
    """Why `path` cannot be trusted (None: it can). `reachable`: someone untrusted can get to it."""
    if stat.S_ISLNK(st.st_mode):
        return f"'{path}' is a symbolic link (Tune makes none; it may point at anyone's files)"
    if not trust.trusts_owner(st):
        return f"'{path}' is owned by user '{user_name(st.st_uid)}', not by you ('{user_name(trust.uid)}')"
    if not reachable:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        return f"'{path}' is writable by every user (mode {mode:04o})"
    if mode & stat.S_IWGRP and not trust.trusts_group(st.st_gid):
        name = group_name(st.st_gid)
        return f"'{path}' is writable by group '{name}' (mode {mode:04o}; --shared-group {name} if you trust it)"
    return None


def opens_to_others(st: os.stat_result, trust: Trust) -> bool:
    """Whether someone untrusted can enter this folder (and so reach what is in it)."""
    return bool(st.st_mode & stat.S_IXOTH) or bool(st.st_mode & stat.S_IXGRP and not trust.trusts_group(st.st_gid))


def check_no_swap(storage: Path, trust: Trust) -> None:
    """Nobody untrusted may rename a study folder (or any folder above it) away and put theirs in its place
    between the check and Tune's read -- ssh's rule for the folders above a key: the storage path and each folder
    above it are owned by a trusted user (you or root) and writable only by trusted people, or sticky (like
    /tmp, where only an entry's owner or the folder's may rename it)."""
    for each in [storage, *storage.parents]:
        where = f"the storage path '{each}'" if each == storage else f"'{each}' (above the storage path)"
        st = each.stat()
        mode = stat.S_IMODE(st.st_mode)
        if not trust.trusts_owner(st):
            raise ConfigError(f"study: {where} belongs to {user_name(st.st_uid)}, who can swap a study folder below "
                              f"it for their own; {HINT}")
        if mode & stat.S_ISVTX:
            continue
        if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not trust.trusts_group(st.st_gid)):
            who = "every user" if mode & stat.S_IWOTH else f"group '{group_name(st.st_gid)}'"
            also = "" if mode & stat.S_IWOTH else f", or --shared-group {group_name(st.st_gid)} if you trust it"
            raise ConfigError(f"study: {where} is writable by {who} (mode {mode:04o}) and not sticky, so anyone "
                              f"there can swap a study folder for their own; {HINT} (chmod +t it{also})")


def check_trusted(folder: str | Path, shared_group: str | None = None) -> None:
    """One-line ConfigError unless the study folder, its storage path and every file in it that someone untrusted
    could reach pass the rule above. Run before anything in the folder is read."""
    trust = Trust.of_user(shared_group)
    path = Path(folder).resolve()  # a link to the folder (runs -> /shared/runs) is fine: its target is checked
    check_no_swap(path.parent, trust)
    reason = walk(path, trust, reachable=True)
    if reason:
        raise ConfigError(f"study: {reason}; {HINT}")


def walk(path: Path, trust: Trust, reachable: bool) -> str | None:
    """The first reason not to trust `path` or anything under it; a folder nobody untrusted can enter ends
    the walk (what is inside could only have been put there by the user or root)."""
    st = path.lstat()
    reason = untrusted(path, st, trust, reachable)
    if reason or not stat.S_ISDIR(st.st_mode):
        return reason
    inner_reachable = reachable and opens_to_others(st, trust)
    if not inner_reachable:
        return None
    with os.scandir(path) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            reason = walk(Path(entry.path), trust, inner_reachable)
            if reason:
                return reason
    return None


def make_study_folder(folder: Path, shared_group: str | None = None, made: list[Path] | None = None) -> list[Path]:
    """Create the study folder (and any missing storage path above it): 0700, or with `shared_group` owned by
    that group, 2770 (setgid, so what Tune writes inside keeps the group). The folders it made go to `made`
    (top first) as they are made, so a start that fails, even halfway through this, removes exactly those."""
    made = [] if made is None else made
    for each in [*reversed(folder.parents), folder]:
        if not each.exists():
            each.mkdir()
            made.append(each)
    if folder in made:
        if shared_group:
            os.chown(folder, -1, shared_gid(shared_group))
            os.chmod(folder, 0o2770)
        else:
            os.chmod(folder, 0o700)
    return made


@contextmanager
def shared_umask(shared_group: str | None):
    """While a shared study runs, what this process and the Ray it starts create is group-writable (umask 007),
    so the next member can resume it; a private study keeps the user's umask (its folder is 0700)."""
    if not shared_group:
        yield
        return
    old = os.umask(0o007)
    try:
        yield
    finally:
        os.umask(old)
