// Sphinx 9.0's Chinese search data ends with `window.Stemmer = ChineseStemmer`, a class it never defines
// (sphinx-doc/sphinx#14229, fixed after 9.0.4); Chinese search stems its Latin words as English does.
// Loaded before language_data.js on the zh pages only.
function ChineseStemmer() { return new EnglishStemmer(); }
