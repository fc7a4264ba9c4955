"""The whole platform end to end on embedded defaults (`run`) and its HTML report (`report`)."""
