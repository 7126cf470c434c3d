"""The one exception type the core library raises for bad input."""


class DicomOrError(ValueError):
    """Invalid input: a context field, a parameter, a query or a stream sample.

    The message always names the offending field (``field``) and the rule it broke
    (``rule``), so an operator can fix the configuration without reading code.
    """

    def __init__(self, field: str, rule: str, value: object = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{field}: {rule}{shown}")
