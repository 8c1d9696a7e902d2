"""Figures drawn on matplotlib's Agg canvas directly: no pyplot, so the user's plotting backend (a
notebook's, say) stays as it was."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "drawing needs matplotlib: pip install 'simple_llm[viz]' (or: pip install matplotlib)"


def figure(**kwargs: Any) -> Any:
    """A matplotlib Figure on its own Agg canvas; ImportError (with INSTALL_HINT) without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig
