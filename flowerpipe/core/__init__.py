"""What every part uses: the error hierarchy, logging and progress, atomic writes, finding files."""
