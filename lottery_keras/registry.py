"""The shape every open registry shares: names mapped to entries of one type, extended by `register`."""

from __future__ import annotations

from typing import Generic, TypeVar

Entry = TypeVar("Entry")


class Registry(dict, Generic[Entry]):
    """Name → entry, for entries of one type; `register` refuses a taken name and an entry of another type.

    Args:
        what: What an entry is, for messages ("mask source").
        entry_type: The class every entry is an instance of.
        entries: The built-in entries.
    """

    def __init__(self, what: str, entry_type: type, entries: dict[str, Entry]):
        super().__init__(entries)
        self.what = what
        self.entry_type = entry_type

    def register(self, name: str, entry: Entry) -> Entry:
        """Add `entry` under `name`.

        Args:
            name: The name it is looked up by; must not be taken.
            entry: An instance of the registry's entry type.

        Returns:
            `entry`, so that registering can be a module-level statement.
        """
        if not isinstance(entry, self.entry_type):
            raise TypeError(f"a {self.what} must be a lottery_keras {self.entry_type.__name__} instance, not "
                            f"{type(entry).__name__}")
        if name in self:
            raise ValueError(f"a {self.what} named {name!r} is registered already")
        self[name] = entry
        return entry
