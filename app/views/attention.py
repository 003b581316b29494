"""Attention page: the (implicit) attention map of one layer for a text, as a T x T heatmap."""

import streamlit as st

from analysis.errors import PrunescopeError
from analysis.implicit_attention import FORMS, attention_maps
from components.charts import attention_heatmap
from components.widgets import one_line, require_model

st.header("Attention")
st.caption("Mamba, Mamba-2, RWKV and Griffin: the exact implicit attention computed from each layer's own "
           "parameters and activations; transformers: the real softmax attention.")

loaded = require_model()

text = st.text_area("Text", value="a:3 b:5 c:1 d:7 | b:5 a:", key="attn_text")
col_form, col_reduce, col_layer = st.columns(3)
form = col_form.selectbox("Form", FORMS[loaded.family], key="attn_form")
reduce = col_reduce.text_input("Reduction", value="mean", key="attn_reduce",
                               help="mean, absmean, or channels:IDX[,IDX...] (heads for transformers)")
layer = col_layer.number_input("Layer", min_value=0, max_value=loaded.n_layers - 1, value=0, step=1,
                               key="attn_layer")

try:
    maps = attention_maps(loaded, text, form=form, reduce=reduce, layers=[int(layer)])
except PrunescopeError as exc:
    st.error(one_line(exc))
else:
    kind = maps.kinds[0]
    st.plotly_chart(attention_heatmap(maps.attn[0].tolist(), maps.tokens,
                                      f"layer {int(layer)} ({kind}, {maps.form}, {maps.reduce})"),
                    key="attn_chart")
    st.session_state["attn_last"] = {"layer": int(layer), "kind": kind, "tokens": maps.tokens}
