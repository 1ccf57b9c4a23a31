"""Framework adapters on `gapfix.client`: ``gapfix.integrations.langchain.GapfixEmbeddings``
(``pip install 'gapfix[langchain]'``) and ``gapfix.integrations.llama_index.GapfixEmbedding``
(``pip install 'gapfix[llama-index]'``). Importing this package imports neither framework."""
