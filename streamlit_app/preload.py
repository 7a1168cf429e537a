"""Have the browser load Streamlit's table and chart code before a page needs it.

Streamlit's browser code for tables (the data grid) and charts (Vega) loads on first use: a page whose first chart
arrives with its data waits for that code on top of the data (~0.5-0.7 s on the 2-core VM). Mounting an empty
table and chart out of sight while the person types their password lets the browser fetch and compile that
code before it is needed. (Doing it at the top of the Equipment page, during its queries, made the machine's
state and charts appear 0.3-0.9 s LATER on the 2 cores: compiling competed with drawing the state.)
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

_HIDDEN = "<style>.st-key-page-code{position:absolute;left:-10000px;width:320px;height:1px;overflow:hidden}</style>"
_CHART = {
    "mark": "line",
    "encoding": {"x": {"field": "t", "type": "quantitative"}, "y": {"field": "v", "type": "quantitative"}},
}


def page_code() -> None:
    """An empty table and chart, out of sight (once per script run)."""
    st.html(_HIDDEN)
    with st.container(key="page-code"):
        st.dataframe(pd.DataFrame({"machine": ["-"]}), hide_index=True)
        st.vega_lite_chart(pd.DataFrame({"t": [0], "v": [0]}), _CHART)
