"""The site report: one self-contained HTML page (``selfreid report``, the API's ``/report``)."""
