"""Views of the same result records: Markdown, HTML with plots, JUnit XML, terminal tables."""
