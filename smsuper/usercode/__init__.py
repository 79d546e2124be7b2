"""The user's code when it does not simply sit in /opt/ml/code.

archive.py unpacks a .tar.gz (a local sourcedir.tar.gz, or one downloaded)
refusing members that would land outside the code directory; remote.py gets
an s3:// object through a download child (s3_child.py) and unpacks it into
an empty code directory, as the SageMaker toolkits do. archive.py and
remote.py run in PID 1; s3_child.py runs in the download child only: it is
the one place that imports boto3. pip.py says how pip runs for the user's
requirements.txt, in train and serve alike.
"""
