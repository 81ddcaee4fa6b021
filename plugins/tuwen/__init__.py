"""tuwen (图文): crawl images from Chinese websites and synthesize LLaVA-style visual-instruction data."""

__version__ = "0.1.0"
