"""`masklam report`: results tables (markdown, JSON) and plots from `masklam run` folders."""
