"""``python -m langchain_pllm``: the ``pllm`` command."""

from langchain_pllm.cli import main

raise SystemExit(main())
