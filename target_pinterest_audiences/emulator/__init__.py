"""The local Pinterest API emulator: see server.py for what it is and why it exists."""

from target_pinterest_audiences.emulator.server import (
    ApiError,
    Emulator,
    main,
    max_events_in_window,
)

__all__ = ["ApiError", "Emulator", "main", "max_events_in_window"]
