"""What every phase shares: params.yaml as checked config objects (config), every error class
(errors), atomic writes and worker pools (io), where the stages write (paths), the device and
precision choices (runtime), and a stage script's clean exit (stage).

Imports nothing of lungseg outside core/.
"""
