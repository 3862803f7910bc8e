"""`fluidmargin ...` commands over the other layers; no logic of their own."""
