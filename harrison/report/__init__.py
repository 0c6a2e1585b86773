"""The static HTML report of a run: what it gathers (collect), its PNGs (figures), the page (html)."""
