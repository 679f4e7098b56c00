"""The tagger's named T5 shapes, without torch (the CLI lists them; :mod:`shelfml.tagger.model` builds them)."""

# Named shapes. "small" has the flan-t5-small dimensions (gated-GELU FFN). transformers 5 always ties
# the T5 head to the embeddings; a config built here keeps the original T5 output scaling.
MODEL_SHAPES: dict[str, dict] = {
    "tiny": dict(d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16),
    "mini": dict(d_model=256, d_ff=768, num_layers=3, num_decoder_layers=3, num_heads=4, d_kv=64),
    "small": dict(d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6, d_kv=64),
}
