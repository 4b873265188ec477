"""Which keys press which action: bindings read from the action names.

Names are split into known moves (``FORWARD_TURN_LEFT`` -> ``FORWARD`` + ``TURN_LEFT``;
ALE's ``UPRIGHTFIRE`` -> ``UP`` + ``RIGHT`` + ``FIRE``) and an action is bound to the
keys of its moves, so holding two keys presses the action that combines them. ``NOOP``
(no move) is the idle action: the one played while no key is held; without one the
null id (``N``, "no action", DESIGN.md §7) is played. Actions whose names are not made
of known moves (``action 3`` of unnamed shards) get a digit or letter key of their own.
The page picks, among the actions whose keys are all held, the one with the most keys.

Key names are the browser's ``KeyboardEvent.key`` values.
"""

from __future__ import annotations

from dataclasses import dataclass

MOVES: dict[str, str] = {  # move -> key; longer names first where one is the prefix of another
    "FORWARD": "ArrowUp", "UP": "ArrowUp",
    "BACKWARD": "ArrowDown", "DOWN": "ArrowDown",
    "TURN_LEFT": "ArrowLeft", "LEFT": "ArrowLeft",
    "TURN_RIGHT": "ArrowRight", "RIGHT": "ArrowRight",
    "STRAFE_LEFT": "a", "STRAFE_RIGHT": "d",
    "ATTACK": " ", "FIRE": " ",
}
IDLE_NAMES = ("NOOP", "NONE", "IDLE")
SPARE_KEYS = tuple("1234567890zxcvbnm")


def split_moves(name: str) -> list[str] | None:
    """The known moves ``name`` is made of (``[]`` for an idle name), or None."""
    rest = name.upper().replace("-", "_")
    if rest in IDLE_NAMES:
        return []
    moves: list[str] = []
    while rest:
        rest = rest.lstrip("_")
        move = max((m for m in MOVES if rest.startswith(m)), key=len, default=None)
        if move is None:
            return None
        moves.append(move)
        rest = rest[len(move):]
    return moves or None


@dataclass(frozen=True)
class Bindings:
    """``keys[i]``: the keys that press action ``i`` (empty: the idle action, or no key
    left to give it); ``idle``: the id played while no key is held."""

    names: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]
    idle: int

    def as_dict(self) -> dict:
        return {"names": list(self.names), "keys": [list(k) for k in self.keys], "idle": self.idle}


def bind_keys(names: tuple[str, ...]) -> Bindings:
    """The bindings of actions ``0 .. len(names)-1``: moves first, then spare keys."""
    keys: list[tuple[str, ...]] = []
    idle, taken = None, set[frozenset[str]]()
    for i, name in enumerate(names):
        moves = split_moves(name)
        combo = () if moves is None else tuple(dict.fromkeys(MOVES[m] for m in moves))
        if moves == [] and idle is None:
            idle = i
        if moves is None or (combo and frozenset(combo) in taken):  # unknown name, or a second action on the same keys
            combo = ()
        taken.add(frozenset(combo))
        keys.append(combo)
    spare = iter(SPARE_KEYS)
    for i, combo in enumerate(keys):
        if not combo and i != idle:
            key = next(spare, None)  # None: more unnamed actions than spare keys; left unbound
            keys[i] = () if key is None else (key,)
    return Bindings(tuple(names), tuple(keys), len(names) if idle is None else idle)
