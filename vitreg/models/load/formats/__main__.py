"""``python -m vitreg.models.load.formats``: print the README's table of formats, drawn from the registry."""

from vitreg.models.load.formats import readme_table

print(readme_table())
