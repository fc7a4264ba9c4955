"""The web page's files (index.html, app.js, app.css, countries.geojson), served by `bigearth.serving.web`."""
