"""`python -m tuwen.local.standin_vlm`: serve the stand-in VLM (see `--help`)."""

from tuwen.local.standin_vlm.process import main

main()
