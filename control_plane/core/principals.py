"""Who is asking, and what they may do. No Ray here.

A :class:`Principal` is a subject (``sub``) with a :class:`Role` and the owners whose jobs it
may see (``see``). Roles are ordered: a viewer subscribes; an operator also submits the
registered job types and controls its own jobs; an admin does everything (every job, every
channel, ``broadcast``, the ``audit`` channel). Jobs record their owner: a principal sees the
jobs of the owners in ``see`` (its own ``sub`` is always among them; ``*`` is every owner).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from control_plane.core.protocol import AUDIT_CHANNEL

EVERY_OWNER = "*"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank


_RANKS = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    sub: str
    role: Role
    see: frozenset[str] = field(default_factory=frozenset)
    expires_at: float | None = None  # epoch seconds; None: never (the shared token)

    @classmethod
    def make(
        cls,
        sub: str,
        role: Role | str,
        see: Iterable[str] = (),
        expires_at: float | None = None,
    ) -> Principal:
        return cls(sub, Role(role), frozenset({sub, *see}), expires_at)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def may_see_owner(self, owner: str | None) -> bool:
        """Whether jobs of ``owner`` are visible (an unknown owner only to an admin)."""
        if self.is_admin or EVERY_OWNER in self.see:
            return True
        return owner is not None and owner in self.see

    def may_control(self, owner: str | None) -> bool:
        """Pause, resume, cancel, suspend: an admin any job, an operator its own."""
        if self.is_admin:
            return True
        return self.role is Role.OPERATOR and owner is not None and owner == self.sub

    def may_submit(self) -> bool:
        return self.role.allows(Role.OPERATOR)

    def may_subscribe(self, channel: str) -> bool:
        """Channels beside jobs': ``audit`` is for admins; the rest are filtered by owner."""
        return self.is_admin or channel != AUDIT_CHANNEL

    def public(self) -> dict[str, object]:
        """What a client is told about itself (``welcome``, token introspection)."""
        return {
            "sub": self.sub,
            "role": self.role.value,
            "see": sorted(self.see),
            "expires_at": self.expires_at,
        }


# The shared token of a single-user install, and --no-auth: one admin.
SHARED_ADMIN = Principal.make("admin", Role.ADMIN)
