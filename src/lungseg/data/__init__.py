"""The user's files and what is made of them: readers for every image and mask format (images,
dicom), folder layouts and MetaData.csv (layout, metadata), the checks `lungseg check` prints
(integrity), normalisation and preprocessing, the split, phantoms, and a data folder's
fingerprint for DVC. processed.py holds the processed-set and split files the later stages read:
training depends on that module alone, never on the readers.

May import core/.
"""
