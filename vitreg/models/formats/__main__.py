"""``python -m vitreg.models.formats``: print the README's table of formats, drawn from the registry."""

from vitreg.models.formats import readme_table

print(readme_table())
