"""Roles and who is asking."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.IntEnum):
    """What a credential may do; each role may do what the ones below it may."""

    viewer = 1
    """read events, threats, snapshots, agents, notifications, provenance, plots, logs"""
    operator = 2
    """also mark events reviewed, draw plots, reproduce results"""
    admin = 3
    """also releases and rollouts, tokens and users, deletions"""

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"unknown role {name!r} (viewer, operator or admin)") from None


ROLE_NAMES = tuple(r.name for r in Role)


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a user logged in to the pages, or a bearer token's name."""

    name: str
    role: Role
    kind: str
    """``session`` (a page login), ``token`` (a bearer token) or ``service`` (secagg itself)"""
    csrf: str | None = None
    """a session's CSRF token, which its unsafe requests must send back"""

    def may(self, needed: Role) -> bool:
        return self.role >= needed
