"""Print the iris data set that scikit-learn ships as CSV: species, then the four measurements.

    python3 examples/write_iris_csv.py > ml/input/data/train/iris.csv

No download: sklearn.datasets.load_iris reads a file inside the scikit-learn package.
"""

import csv
import sys

from sklearn.datasets import load_iris

iris = load_iris()
writer = csv.writer(sys.stdout, lineterminator="\n")
for measurements, target in zip(iris.data, iris.target):
    writer.writerow([iris.target_names[target]] + [f"{value:g}" for value in measurements])
