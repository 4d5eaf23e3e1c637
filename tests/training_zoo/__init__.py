"""Training scripts written the way practitioners write them: buggy ones with their fixed twins,
and correct ones. The gradient monitor must name each bug's cause and stay silent on the rest."""
