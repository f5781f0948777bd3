"""CommonsenseQA needs no builder: its rows are used as the hub has them (``utils.py``)."""
