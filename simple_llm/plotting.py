"""Figures drawn on matplotlib's Agg canvas directly: no pyplot, so the user's plotting backend (a
notebook's, say) stays as it was."""

from __future__ import annotations

from typing import Any

# matplotlib is a dependency; this is for an environment that lost it
INSTALL_HINT = "drawing needs matplotlib, which this environment lacks: pip install matplotlib"


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
