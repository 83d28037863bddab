"""What owners read: the report model and its queries, renderers (text, Markdown, HTML,
charts), drift and the golden-set evaluation. Imports the pipeline and everything below it."""
